#!/usr/bin/env bash
# Training benchmark, side by side: gramrr vs torch (+ PEFT) on the same random
# Qwen3-0.6B-shaped checkpoint, seq 512, batch 2, f32, LoRA r=16 on all linear layers and full
# fine-tuning. Writes the "## Training" section of BENCHMARKS.md.
#   bash tools/bench_train.sh            (needs: pip install -r tools/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
DIR=${BENCH_DIR:-/tmp/gramrr-bench}
MODEL=$DIR/qwen3-0.6b
# Four timed steps after one untimed warm-up step (the allocator grows in it; it is ~40% slower).
STEPS=${STEPS:-4}
mkdir -p "$DIR"
source tools/blas_choice.sh
cargo build --release -q -p gramrr-cli -p gramrr-train --example bench_train
if [ ! -f "$MODEL/model.safetensors" ]; then
  ./target/release/gramrr init-model --preset qwen3-0-6b --out "$MODEL" --seed 0
fi
for cfg in lora full; do
  flags=""; [ $cfg = lora ] && flags="--lora-rank 16"
  RAYON_NUM_THREADS=$THREADS ./target/release/examples/bench_train --model "$MODEL" $flags --steps "$STEPS" > "$DIR/train-gramrr-$cfg.json"
  python3 tools/bench_train_torch.py --model "$MODEL" $flags --steps "$STEPS" --threads "$THREADS" > "$DIR/train-torch-$cfg.json"
done
# The demo's model shape: hidden 128, 4 layers, 8 heads of 16, sequence 90, batch 64, full fine-tuning; gramrr
# with two data-parallel workers (what `gramrr demo` uses), torch with its two threads.
SMALL=$DIR/demo-128x4-h8
if [ ! -f "$SMALL/model.safetensors" ]; then
  ./target/release/gramrr init-model --out "$SMALL" --hidden 128 --intermediate 384 --layers 4 --heads 8 --kv-heads 8 --head-dim 16
fi
./target/release/examples/bench_train --model "$SMALL" --seq-len 90 --batch-size 64 --steps 10 --warmup 2 --workers "$THREADS" > "$DIR/train-gramrr-small.json"
python3 tools/bench_train_torch.py --model "$SMALL" --seq-len 90 --batch-size 64 --steps 10 --warmup 2 --threads "$THREADS" > "$DIR/train-torch-small.json"
python3 tools/bench_report.py train "$DIR/train-gramrr-lora.json,$DIR/train-gramrr-full.json,$DIR/train-gramrr-small.json" \
  "$DIR/train-torch-lora.json,$DIR/train-torch-full.json,$DIR/train-torch-small.json" BENCHMARKS.md
