#!/usr/bin/env bash
# Builds `gramrr` with the `cuda` feature on a machine without a GPU or a CUDA install (issue 18):
# the CUDA toolkit comes from PyPI into a venv (target/cuda-venv), the build goes to its own
# target dir (target/cuda: every crate is compiled again there; seeding it with a copy of
# target/release was tried and saved nothing). Nothing here runs on a GPU; tools/gpu_check.sh is what a GPU
# machine runs with the result.
#
#   bash tools/build_cuda.sh            # CUDA_COMPUTE_CAP=90 (H100/H200); 80 for A100, 89 for L4
#
# Why these packages: the cu12 wheels of nvcc (nvidia-cuda-nvcc-cu12, up to 12.9.86) hold only
# ptxas, libdevice and headers, not nvcc; the CUDA 13 wheels (nvidia-cuda-nvcc, -nvvm, -crt,
# -runtime, -cccl, -cublas, -curand: the versions torch 2.15+cu132 pulls) hold the whole
# compiler, all under site-packages/nvidia/cu13. candle-kernels compiles its kernels with that
# nvcc (CUDA_COMPUTE_CAP, since there is no nvidia-smi to ask); cudarc reads the version from
# `nvcc --version` and links libcuda, cuBLAS, cuRAND and NVRTC dynamically. libcuda is the
# driver's, on no wheel, so the link uses a stub built here from cudarc's own list of driver
# functions (what the toolkit's lib64/stubs/libcuda.so is); the GPU machine's driver provides
# the real one at run time, with the venv's lib dir on LD_LIBRARY_PATH for the others.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
VENV="$PWD/target/cuda-venv"
log() { echo "[build_cuda $(date -u +%H:%M:%S)] $*"; }

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import os, nvidia; assert os.path.exists(os.path.join(nvidia.__path__[0], 'cu13/bin/nvcc'))" 2>/dev/null || {
  log "installing the CUDA 13.0 toolkit wheels into $VENV"
  "$VENV/bin/pip" install --quiet nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.1.3 nvidia-curand==10.4.0.35
}
ROOT="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"

# The toolkit layout nvcc.profile and cudarc expect: targets/x86_64-linux/{include,lib64},
# lib64, unversioned .so names for the linker, and the libcuda stub.
mkdir -p "$ROOT/targets/x86_64-linux" "$ROOT/lib/stubs"
ln -sfn ../../include "$ROOT/targets/x86_64-linux/include"
ln -sfn ../../lib "$ROOT/targets/x86_64-linux/lib64"
ln -sfn lib "$ROOT/lib64"
for f in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  [[ -e "$ROOT/lib/$f" ]] && ln -sfn "$f" "$ROOT/lib/${f%%.so.*}.so"
done
CUDARC_SYS=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs | head -1)
grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC_SYS" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u > "$ROOT/lib/stubs/libcuda_stub.c"
gcc -shared -fPIC -o "$ROOT/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$ROOT/lib/stubs/libcuda_stub.c"
log "CUDA root $ROOT: $("$ROOT/bin/nvcc" --version | tail -2 | head -1); libcuda stub with $(wc -l < "$ROOT/lib/stubs/libcuda_stub.c") driver symbols"

export PATH="$ROOT/bin:$PATH" CUDA_ROOT="$ROOT" CUDA_HOME="$ROOT" CUDA_PATH="$ROOT"
export LIBRARY_PATH="$ROOT/lib:$ROOT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CARGO_TARGET_DIR="$PWD/target/cuda" CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
log "cargo build --release -p gramrr-cli --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
start=$(date +%s)
nice -n 19 cargo build --release -p gramrr-cli --features cuda
took=$(( $(date +%s) - start ))
BIN="$CARGO_TARGET_DIR/release/gramrr"
log "built $BIN in ${took}s on $(nproc) cores"
echo "{\"what\": \"cargo build --release -p gramrr-cli --features cuda\", \"seconds\": $took, \"cuda\": \"$("$ROOT/bin/nvcc" --version | grep -o 'release [0-9.]*')\", \"compute_cap\": $CUDA_COMPUTE_CAP, \"cores\": $(nproc)}" | tee target/cuda/build.json
# The binary needs the driver's libcuda.so.1, which this machine lacks: ldd names it missing.
LD_LIBRARY_PATH="$ROOT/lib" ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc' || true
