#!/usr/bin/env bash
# The demo over several seeds (default 0 1 2), then the "## Demo" section of BENCHMARKS.md
# (mean and spread of every figure, targets per seed). Each full demo takes about 18 minutes
# on 2 cores; finished seeds are reused (the demo resumes finished stages).
#   bash tools/bench_demo.sh [SEED...]
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${*:-0 1 2}
OUT=${DEMO_OUT:-out}
cargo build --release -q -p gramrr-cli
dirs=()
for s in $SEEDS; do
  d=$OUT/demo-seed$s
  if [ ! -f "$d/report.json" ]; then
    resume=""; [ -d "$d" ] && resume=--resume
    ./target/release/gramrr demo --seed "$s" --out "$d" $resume
  fi
  dirs+=("$d")
done
./target/release/gramrr demo --combine "${dirs[@]}" --out "$OUT/demo-seeds"
python3 tools/bench_report.py demo "$(IFS=,; echo "${dirs[*]}")" - BENCHMARKS.md
