# Sourced by tools/bench_*.sh: which GEMM gramrr uses in a benchmark, unless GRAMRR_BLAS is set.
# gramrr's own choice (crates/gramrr-model/src/blas.rs) is the gemm crate on AMD CPUs with
# AVX-512, where MKL runs its AVX2 kernels; elsewhere it searches MKL, then OpenBLAS. MKL from
# `pip install mkl` (tools/requirements.txt) lives in the Python prefix, off the loader's path, so
# on such CPUs point GRAMRR_BLAS at it: the same library torch's CPU wheel uses. The JSON's
# "matmul" field says which GEMM ran.
if [ -z "${GRAMRR_BLAS+x}" ] && ! grep -q AuthenticAMD /proc/cpuinfo 2>/dev/null; then
  MKL_LIB=$(python3 -c 'import glob, sys; print(next(iter(sorted(glob.glob(sys.prefix + "/lib/libmkl_rt.so.*"))), ""))' 2>/dev/null || true)
  if [ -n "$MKL_LIB" ]; then export GRAMRR_BLAS=$MKL_LIB; fi
fi
