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
# gramrr's f32 matmuls go to a BLAS loaded at run time (crates/gramrr-model/src/blas.rs). MKL from
# `pip install mkl` (tools/requirements.txt) lives in the Python prefix, off the loader's path:
# point GRAMRR_BLAS at it unless the caller chose. Without it gramrr finds OpenBLAS or uses
# candle's GEMM; the JSON's "matmul" field says which ran.
if [ -z "${GRAMRR_BLAS+x}" ]; then
  MKL_LIB=$(python3 -c 'import glob, sys; print(next(iter(sorted(glob.glob(sys.prefix + "/lib/libmkl_rt.so.*"))), ""))' 2>/dev/null || true)
  [ -n "$MKL_LIB" ] && export GRAMRR_BLAS=$MKL_LIB
fi
cargo build --release -q -p gramrr-cli
if [ ! -f "$MODEL/model.safetensors" ]; then
  ./target/release/gramrr init-model --preset qwen3-0-6b --out "$MODEL" --seed 0
fi
RAYON_NUM_THREADS=$THREADS ./target/release/gramrr bench engine --model "$MODEL" --output "$DIR/gramrr.json" ${BENCH_ARGS:-} > /dev/null
python3 tools/bench_engine_torch.py --model "$MODEL" --threads "$THREADS" --output "$DIR/torch.json" ${BENCH_ARGS:-} > /dev/null
python3 tools/bench_report.py engine "$DIR/gramrr.json" "$DIR/torch.json" BENCHMARKS.md
