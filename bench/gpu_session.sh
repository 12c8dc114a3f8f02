#!/usr/bin/env bash
# One call on the GPU machine: CUDA tests, compute-sanitizer, benchmark — in that order,
# each step bounded by `timeout`, all output in $OUT/log.txt, bench JSON/PNG in $OUT.
# Usage: bench/gpu_session.sh [tests] [tests-pdl] [sanitize] [bench] [bench-pdl] [fuzz] [nccl]
# (nccl needs a machine of two or more GPUs)
# (the -pdl steps run with FUSEDMOE_PDL=1: programmatic dependent launch between kernels)
#   BIN: folder with test_cuda_router, test_cuda_experts, fusedmoe-fuzz and libfusedmoe_c.so (default: build,
#   configured and built here when missing; needs the CUTLASS headers, scripts/fetch_cutlass.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fusedmoe-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
BIN=${BIN:-}
log="$OUT/log.txt"
summary=()
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "===== $name: $*" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  summary+=("$(printf '%-28s rc=%-3s %4ds' "$name" "$rc" $((SECONDS - t0)))")
  echo "===== $name rc=$rc" >>"$log"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1;
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } >>"$log" 2>&1

if [ -z "$BIN" ]; then
  step build 500 bash -c "cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDMOE_CUDA=ON \
    >/dev/null && cmake --build build-gpu -j16 --target test_cuda_router test_cuda_experts test_nccl fusedmoe_c fusedmoe-fuzz"
  BIN=build-gpu
  cp build-gpu/tests/test_cuda_* build-gpu/tools/fusedmoe-fuzz "$BIN"/ 2>/dev/null || true
fi
find_bin() { ls "$BIN/$1" 2>/dev/null || ls "$BIN/tests/$1" 2>/dev/null || ls "$BIN/tools/$1"; }

for what in "$@"; do
  case "$what" in
    tests)
      step test_cuda_router 120 "$(find_bin test_cuda_router)"
      step test_cuda_experts 420 "$(find_bin test_cuda_experts)" ;;
    tests-pdl)
      step test_cuda_experts_pdl 300 env FUSEDMOE_PDL=1 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Supported/*:CudaExperts.Skew*:CudaExperts.CudaGraph*:CudaExperts.RunTwice*:CudaExperts.ForwardWith*' ;;
    sanitize)
      filter='Supported/*silu*:CudaExperts.SkewMasked*:CudaExperts.ZeroTokens*:CudaExperts.CudaGraph*'
      step memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$(find_bin test_cuda_experts)" \
        --gtest_filter="$filter"
      step memcheck_router 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$(find_bin test_cuda_router)"
      step racecheck 300 compute-sanitizer --tool racecheck --error-exitcode 9 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Supported/*_silu_*:CudaExperts.SkewMasked*'
      step initcheck 300 compute-sanitizer --tool initcheck --error-exitcode 9 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Supported/*_silu_*:CudaExperts.SkewMasked*' ;;
    bench)
      step bench 300 python3 bench/gpu_bench.py --lib "$(find_bin libfusedmoe_c.so)" --out "$OUT" ${BENCH_ARGS:-} ;;
    fuzz)  # the GPU campaign: FUZZ_SEEDS (default 1:10000) CUDA cases, memcheck on the first 40
      step fuzz_cuda 420 "$(find_bin fusedmoe-fuzz)" --backend cuda --small --seeds "${FUZZ_SEEDS:-1:10000}"
      step fuzz_memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$(find_bin fusedmoe-fuzz)" \
        --backend cuda --small --seeds 1:40 ;;
    nccl)
      step test_nccl 200 "$(find_bin test_nccl)" ;;
    bench-pdl)
      step bench_pdl 300 env FUSEDMOE_PDL=1 python3 bench/gpu_bench.py --lib "$(find_bin libfusedmoe_c.so)" \
        --out "$OUT" --tag pdl --no-loop ${BENCH_ARGS:-} ;;
  esac
done
grep -E "^\[  (FAILED|PASSED) |^\[  FAILED  \]|ERROR SUMMARY|RACECHECK SUMMARY|^model|^#|^(mixtral|qwen3|deepseek)-?[a-z0-9-]* +[0-9]|^fusedmoe-fuzz|passed, [0-9]+ failed|^FAIL|repro:" "$log" | tail -70
printf '%s\n' "${summary[@]}"
