#!/usr/bin/env bash
# gramrr vs llama.cpp (llama-cpp-python) on the same GGUF files, same threads, one run:
# prompt processing (512 tokens, logits at every position on both sides) and decoding at batch
# 1 (and 8 for gramrr; llama-cpp-python's API decodes one sequence), plus gramrr's own f32
# (--dequantize) for the "quantized ≥ 3× f32" target, and gramrr's decoding on candle's
# kernels alone (GRAMRR_QKERNELS=off). Decoding is compared as llama.cpp's is timed: the steps
# after the prompt (gramrr's run of prompt + 128 new tokens minus its run of prompt + 1; until
# 2026-12-06 the table divided gramrr's whole generate call, prefill included, by llama.cpp's
# steps alone). Prints a Markdown table for BENCHMARKS.md
# and writes the raw JSON to $OUT (default target/bench_gguf).
# Needs tools/setup_llamacpp.sh and tools/gguf_parity.sh (which writes the Q8_0/Q4_K_M files).
# Usage: bash tools/bench_gguf.sh [CACHE_DIR] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${GRAMRR_GGUF_DIR:-$HOME/.cache/gramrr/gguf}}"
THREADS="${2:-$(nproc)}"
OUT="${OUT:-target/bench_gguf}"
mkdir -p "$OUT"
cargo build --release -p gramrr-cli >/dev/null
G=target/release/gramrr
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
export RAYON_NUM_THREADS="$THREADS"
FILES="${FILES:-smollm2.q8_0.gguf smollm2.q4_k_m.gguf SmolLM2-135M-Instruct.Q4_1.gguf}"
f0=$(echo $FILES | cut -d' ' -f1)
f32() {
  $G bench engine --model "$DIR/$f0" --dequantize --score-batch 1 --score-len 512 --prompt-len 128 --new-tokens 128 \
     --decode-batches 1,8 --skip gemm,gemm-bf16 --reps 2 --output "$OUT/gramrr.f32.$1.json" >/dev/null 2>&1
}
f32 1
for f in $FILES; do
  [[ -s "$DIR/$f" ]] || { echo "missing $DIR/$f (run tools/gguf_parity.sh)"; continue; }
  $G bench engine --model "$DIR/$f" --score-batch 1 --score-len 512 --prompt-len 128 --new-tokens 128 \
     --decode-batches 1,8 --skip gemm,gemm-bf16 --reps 2 --output "$OUT/gramrr.$f.json" >/dev/null 2>&1
  # Decoding on candle's kernels only (what gramrr did before qkernels), for comparison
  # (32 new tokens, one rep: candle's scalar Q5_0/Q4_1 kernels are slow).
  GRAMRR_QKERNELS=off $G bench engine --model "$DIR/$f" --score-batch 1 --score-len 16 --prompt-len 128 --new-tokens 32 \
     --decode-batches 1,8 --skip gemm,gemm-bf16 --reps 1 --output "$OUT/gramrr-candle.$f.json" >/dev/null 2>&1
  if python3 -c "import llama_cpp" 2>/dev/null; then
    python3 tools/gguf_peer.py bench "$DIR/$f" "$THREADS" > "$OUT/llamacpp.$f.json"
  fi
done
# gramrr's f32 runs twice, before and after the quantized files, and the faster of the two
# counts: the machine may be shared, and this keeps the "quantized / f32" ratio from flattering.
f32 2
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$OUT" "$THREADS" "$LOAD_START" "$LOAD_END" $FILES <<'PY'
import json, os, sys, platform
out, threads, load0, load1, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
def j(p):
    p = os.path.join(out, p)
    return json.load(open(p)) if os.path.exists(p) else None
def steps(g, key):
    """Decoding steps alone (tokens/s after the prompt's prefill and first token): what
    llama.cpp's figure measures (one `llama_decode` per token after the prompt)."""
    v = g["decode"][key]["decode_steps_tokens_per_second"]
    return float("nan") if v is None else v  # None: the longer run was not slower (noise)
def faster(a, b):
    if not (a and b):
        return a or b
    best = json.loads(json.dumps(a))
    for key in ("batch_1", "batch_8"):
        if steps(b, key) > steps(best, key):
            best["decode"][key] = b["decode"][key]
    if b["score"]["tokens_per_second"] > best["score"]["tokens_per_second"]:
        best["score"] = b["score"]
    return best
f32 = faster(j("gramrr.f32.1.json"), j("gramrr.f32.2.json"))
print(f"CPU: {cpu}, {threads} threads. Model: SmolLM2-135M-Instruct.")
print(f"Load average (1, 5, 15 min) at the start: {load0}; at the end: {load1}.\n")
print("| file | gramrr pp512 tok/s | llama.cpp pp512 | ratio | gramrr decode b1 tok/s | llama.cpp b1 | ratio | gramrr b8 | gramrr b1 / own f32 b1 | gramrr b1 with prefill | candle kernels b1 / b8 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for f in files:
    g, l = j(f"gramrr.{f}.json"), j(f"llamacpp.{f}.json")
    if not g:
        continue
    gp, g1, g8 = g["score"]["tokens_per_second"], steps(g, "batch_1"), steps(g, "batch_8")
    e1 = g["decode"]["batch_1"]["tokens_per_second"]
    lp = l["prompt_512_tokens_per_second"] if l else None
    l1 = l["decode_batch1_tokens_per_second"] if l else None
    r = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
    fb1 = steps(f32, "batch_1") if f32 else None
    c = j(f"gramrr-candle.{f}.json")
    cd = f"{steps(c, 'batch_1'):.1f} / {steps(c, 'batch_8'):.1f}" if c else "n/a"
    print(f"| {f} | {gp:.0f} | {lp and f'{lp:.0f}' or 'n/a'} | {r(gp, lp)} | {g1:.1f} | {l1 and f'{l1:.1f}' or 'n/a'} | {r(g1, l1)} | {g8:.1f} | {r(g1, fb1)} | {e1:.1f} | {cd} |")
if f32:
    print(f"\ngramrr f32 (--dequantize, faster of two runs): pp512 {f32['score']['tokens_per_second']:.0f} tok/s, decode steps b1 "
          f"{steps(f32, 'batch_1'):.1f}, b8 {steps(f32, 'batch_8'):.1f} tok/s (with the 128-token prefill: "
          f"{f32['decode']['batch_1']['tokens_per_second']:.1f}, {f32['decode']['batch_8']['tokens_per_second']:.1f})")
print("\nDecode columns: tokens per second of the decoding steps after the 128-token prompt (prompt 128 "
      "+ 128 new, minus a run of prompt + 1 new), as llama.cpp's is timed; 'with prefill' is the whole generate call.")
PY
