#!/usr/bin/env bash
# Reward-server load test: starts `gramrr serve` on a model (default: the RM of a finished
# `gramrr demo --out out/demo`), sends a bounded number of requests from concurrent clients
# (crates/gramrr-serve/examples/load_test.rs), and writes the "## Reward server" section of
# BENCHMARKS.md. Stops the server at the end.
#   bash tools/bench_serve.sh [DEMO_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${1:-out/demo}
MODEL=${MODEL:-$DEMO/run/final/model}
PAIRS=${PAIRS:-$DEMO/data/test.jsonl}
PORT=${PORT:-8765}
DIR=${BENCH_DIR:-/tmp/gramrr-bench}
FLAGS="--max-batch 64 --max-wait-ms 10"
mkdir -p "$DIR"
cargo build --release -q -p gramrr-cli -p gramrr-serve --example load_test
./target/release/gramrr serve --model "$MODEL" --template compact --one-order --max-new-tokens 64 --port "$PORT" $FLAGS > "$DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  sleep 0.2
done
: > "$DIR/serve.jsonl"
for run in "/v1/judge 500 64" "/v1/judge 200 1" "/get_reward 200 32"; do
  set -- $run
  ./target/release/examples/load_test --url "127.0.0.1:$PORT" --pairs "$PAIRS" --path "$1" --requests "$2" --clients "$3" \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['meta']={'model': '$MODEL', 'server_flags': '$FLAGS'}; print(json.dumps(r))" >> "$DIR/serve.jsonl"
done
python3 tools/bench_report.py serve "$DIR/serve.jsonl" - BENCHMARKS.md
