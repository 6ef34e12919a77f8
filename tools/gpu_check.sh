#!/usr/bin/env bash
# The one short check for a session with a GPU (issue 18). WRITTEN BUT NOT YET RUN: the machine
# it was written on has no GPU; the `cuda` build itself is tools/build_cuda.sh.
#
# On the committed fixture models (crates/gramrr-model/tests/fixtures: tiny Llama 3 with GQA,
# llama3 rope and tied embeddings, Qwen3 with qk-norm, and the Q8_0 GGUF of the Llama one),
# the same commands run on cpu and on cuda and must agree:
#   - gramrr logprobs: per-token log-probs within 1e-3 (f32 on both; cuBLAS sums in another
#     order; TF32 would show as ~1e-3 and is the thing to look at if this fails);
#   - gramrr generate, greedy, 24 tokens: identical text;
# then `gramrr bench engine --device cuda` on the Llama fixture (JSON into $OUT).
#
#   bash tools/gpu_check.sh [GRAMRR_BINARY]   (default target/cuda/release/gramrr)
# Prints one line per check and "gpu_check: all passed" or exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
G="${1:-target/cuda/release/gramrr}"
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
# The cuBLAS/cuRAND/NVRTC libraries the build linked, from the build's venv when it is here.
LIB=$(ls -d target/cuda-venv/lib/python3*/site-packages/nvidia/cu13/lib 2>/dev/null | head -1 || true)
[[ -n "$LIB" ]] && export LD_LIBRARY_PATH="$PWD/$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
[[ -x "$G" ]] || { echo "no $G: run bash tools/build_cuda.sh (or pass the binary)"; exit 1; }
ldd "$G" | grep -q "not found" && { ldd "$G" | grep "not found"; exit 1; }

F=crates/gramrr-model/tests/fixtures
cat > "$OUT/lp.jsonl" <<'EOF'
{"prompt": "The quick brown fox", "completion": " jumps over the lazy dog"}
{"prompt": "Once upon a time", "completion": ", in a land far away, there lived a dragon."}
EOF
cat > "$OUT/gen.jsonl" <<'EOF'
{"prompt": "The quick brown fox"}
{"messages": [{"role": "user", "content": "What is two plus two?"}]}
EOF
for M in "$F/models/llama-gqa-rope3-tied" "$F/models/qwen3-qknorm" "$F/gguf/llama-gqa-rope3-tied.q8_0.gguf"; do
  name=$(basename "$M")
  for dev in cpu cuda; do
    "$G" logprobs --model "$M" --device "$dev" --input "$OUT/lp.jsonl" --output "$OUT/$name.$dev.lp.jsonl" 2>/dev/null
    "$G" generate --model "$M" --device "$dev" --input "$OUT/gen.jsonl" --output "$OUT/$name.$dev.gen.jsonl" --max-new-tokens 24 2>/dev/null
  done
  python3 - "$OUT" "$name" <<'PY'
import json, sys
out, name = sys.argv[1], sys.argv[2]
rd = lambda f: [json.loads(l) for l in open(f"{out}/{name}.{f}")]
worst = 0.0
for c, g in zip(rd("cpu.lp.jsonl"), rd("cuda.lp.jsonl")):
    assert len(c["token_logprobs"]) == len(g["token_logprobs"]), name
    worst = max([worst] + [abs(a - b) for a, b in zip(c["token_logprobs"], g["token_logprobs"])])
assert worst < 1e-3, f"{name}: cpu vs cuda log-probs differ by {worst}"
same = [c["text"] == g["text"] for c, g in zip(rd("cpu.gen.jsonl"), rd("cuda.gen.jsonl"))]
assert all(same), f"{name}: greedy text differs on cuda: {same}"
print(f"{name}: cpu vs cuda max |Δ log-prob| {worst:.2e}, greedy identical {sum(same)}/{len(same)}")
PY
done
"$G" bench engine --model "$F/models/llama-gqa-rope3-tied" --device cuda --output "$OUT/bench_engine_cuda.json" >/dev/null
echo "bench engine on cuda: $OUT/bench_engine_cuda.json"
echo "gpu_check: all passed"
