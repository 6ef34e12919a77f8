#!/usr/bin/env bash
# Remote-backend throughput: the pseudo-label workload (gramrr judge, reason mode, 3 sampled
# votes, both orders, as stage 4a runs it) on one tiny model, locally and through the remote
# backend against 1 and 2 `gramrr serve` replicas of the same model on this machine; then the
# client's own cost per request against 8 instant loopback servers (`gramrr bench remote`).
# Prints one JSON line per measurement (stdout) and the CPU.
#   bash tools/bench_remote.sh [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-48}
DIR=${BENCH_DIR:-/tmp/gramrr-bench-remote}
G=./target/release/gramrr
mkdir -p "$DIR"
cargo build --release -q -p gramrr-cli
[ -d "$DIR/model" ] || $G init-model --out "$DIR/model" --hidden 128 --layers 4 --heads 4 --kv-heads 2 --intermediate 256 --seed 3 >/dev/null
python3 - "$DIR/pairs.jsonl" "$N" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"id": f"p{i}", "prompt": f"What is {i} + {i}?", "response_a": str(2 * i), "response_b": str(2 * i + 1), "label": "A"}) + "\n")
PY
JUDGE="--input $DIR/pairs.jsonl --template compact --votes 3 --temperature 0.8 --no-early-stop --max-new-tokens 32"
now() { python3 -c 'import time; print(time.time())'; }
report() { python3 -c "import json,sys; print(json.dumps({'what': sys.argv[1], 'pairs': $N, 'judgments': $N*6, 'seconds': round(float(sys.argv[2]), 2), 'judgments_per_s': round($N*6/float(sys.argv[2]), 2)}))" "$1" "$2"; }
t0=$(now); $G judge --model "$DIR/model" $JUDGE --output "$DIR/local.jsonl" 2>/dev/null; t1=$(now)
report "local engine" "$(python3 -c "print($t1-$t0)")"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done' EXIT
URLS=""
for r in 1 2; do
  PORT=$((18700 + r))
  $G serve --model "$DIR/model" --port $PORT --max-wait-ms 5 > "$DIR/serve-$r.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.1; done
  URLS="${URLS:+$URLS,}http://127.0.0.1:$PORT/v1"
  t0=$(now); $G judge --model "$URLS" --tokenizer "$DIR/model" $JUDGE --output "$DIR/remote-$r.jsonl" 2>/dev/null; t1=$(now)
  report "remote, $r gramrr serve replica(s)" "$(python3 -c "print($t1-$t0)")"
done
$G bench remote --tokenizer "$DIR/model" --servers 8 --requests 20000 | python3 -c "import json,sys; r=json.load(sys.stdin); r['what']='client overhead, 8 instant servers'; print(json.dumps(r))"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores" >&2
