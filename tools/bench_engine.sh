#!/usr/bin/env bash
# Engine benchmark, side by side: gramrr vs transformers+torch on the same random
# Qwen3-0.6B-shaped checkpoint and thread count. Writes the "## Engine" section of BENCHMARKS.md.
#   bash tools/bench_engine.sh            (needs: pip install -r tools/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
DIR=${BENCH_DIR:-/tmp/gramrr-bench}
MODEL=$DIR/qwen3-0.6b
mkdir -p "$DIR"
source tools/blas_choice.sh
cargo build --release -q -p gramrr-cli
if [ ! -f "$MODEL/model.safetensors" ]; then
  ./target/release/gramrr init-model --preset qwen3-0-6b --out "$MODEL" --seed 0
fi
RAYON_NUM_THREADS=$THREADS ./target/release/gramrr bench engine --model "$MODEL" --output "$DIR/gramrr.json" ${BENCH_ARGS:-} > /dev/null
python3 tools/bench_engine_torch.py --model "$MODEL" --threads "$THREADS" --output "$DIR/torch.json" ${BENCH_ARGS:-} > /dev/null
python3 tools/bench_report.py engine "$DIR/gramrr.json" "$DIR/torch.json" BENCHMARKS.md
