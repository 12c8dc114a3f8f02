#!/usr/bin/env bash
# One call on the GPU machine: CUDA tests, compute-sanitizer, benchmark — in that order,
# each step bounded by `timeout`, all output in $OUT/log.txt, bench JSON/PNG in $OUT.
# Usage: bench/gpu_session.sh [tests] [tests-quick] [tests-fp4] [tests-no-pdl] [sanitize] [sanitize-variants] [sanitize-batched] [triton] [bench] [bench-no-pdl] [profile] [stalls] [gate] [ab] [bits] [probe] [sanitize-fused] [fuzz] [nccl] [ep] [sanitize-ep] [ep-batched] [python]
# (python builds the extension here — it needs the CUTLASS headers: third_party/cutlass-* in the
#  tree or $BIN/cutlass.tar.xz — in the background from the start, then runs the pytest suite
#  with torch and transformers)
# (nccl, ep, sanitize-ep and ep-batched need a machine of two or more GPUs)
# (the -no-pdl steps run with FUSEDMOE_PDL=0: no programmatic dependent launch between kernels)
#   BIN: folder with the test binaries (test_cuda_*, test_nccl), fusedmoe-fuzz, fusedmoe-bench and
#   libfusedmoe_c.so, loose or packed in bin.tar.xz (bench/make_gpu_bin.sh makes it) (default: build,
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
    >/dev/null && cmake --build build-gpu -j16 --target test_cuda_router test_cuda_plan test_cuda_experts \
    test_cuda_monolithic test_cuda_ep test_nccl fusedmoe_c fusedmoe-fuzz fusedmoe-bench"
  BIN=build-gpu  # find_bin looks in build-gpu/tests and build-gpu/tools too
fi
if [ -f "$BIN/bin.tar.xz" ]; then  # the binaries, carried packed (bench/make_gpu_bin.sh)
  tar -xJf "$BIN/bin.tar.xz" -C "$BIN"
fi
if [ -f "$BIN/base/libfusedmoe_c.so.xz" ]; then  # the ab step's baseline library
  xz -dc "$BIN/base/libfusedmoe_c.so.xz" >"$BIN/base/libfusedmoe_c.so"
fi
if [ ! -d third_party/cutlass-4.2.0.0 ] && [ -f "$BIN/cutlass.tar.xz" ]; then  # the headers, carried packed
  mkdir -p third_party && tar -xJf "$BIN/cutlass.tar.xz" -C third_party
fi
pydir=$PWD/build-py/pkg
case " $* " in *" python "*)  # build fusedmoe._C for this machine's python while the GPU steps run
  # with the nanobind version pyproject.toml pins, when its wheel travels in $BIN/wheels
  nbpath=""
  if ls "$BIN"/wheels/nanobind-*.whl >/dev/null 2>&1; then
    pip install -q --no-index --no-deps --target build-py-nanobind "$BIN"/wheels/nanobind-*.whl && nbpath=$PWD/build-py-nanobind
  fi
  ( python3 -c 'import nanobind; print("machine nanobind", nanobind.__version__)'
    PYTHONPATH=$nbpath python3 -c 'import nanobind; print("build nanobind", nanobind.__version__)'
    PYTHONPATH=$nbpath cmake -S . -B build-py -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDMOE_PYTHON=ON -DFUSEDMOE_CUDA=ON \
      -DFUSEDMOE_BUILD_TESTS=OFF -DFUSEDMOE_BUILD_TOOLS=OFF -DPython_EXECUTABLE="$(command -v python3)" \
      -DCMAKE_MODULE_LINKER_FLAGS="${PY_LINK_FLAGS:-}" &&
    timeout 500 cmake --build build-py -j12 --target _C && mkdir -p "$pydir/fusedmoe" &&
    cp python/fusedmoe/*.py build-py/python/_C*.so "$pydir/fusedmoe/" ) >"$OUT/python_build.txt" 2>&1 &
  pybuild=$! ;;
esac
find_bin() { ls "$BIN/$1" 2>/dev/null || ls "$BIN/tests/$1" 2>/dev/null || ls "$BIN/tools/$1"; }

for what in "$@"; do
  case "$what" in
    tests)
      step test_cuda_router 120 "$(find_bin test_cuda_router)"
      step test_cuda_plan 120 "$(find_bin test_cuda_plan)"
      step test_cuda_experts 420 "$(find_bin test_cuda_experts)"
      step test_cuda_batched 180 "$(find_bin test_cuda_batched)"
      step test_cuda_monolithic 240 "$(find_bin test_cuda_monolithic)" ;;
    tests-no-pdl)  # the kernels launched without programmatic dependent launch (FUSEDMOE_PDL=0)
      step test_cuda_experts_no_pdl 300 env FUSEDMOE_PDL=0 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Supported/*:Variants/*:CudaExperts.CudaGraph*:CudaExperts.RunTwice*:CudaExperts.ForwardWith*' ;;
    sanitize-fused)  # the fused decode kernel alone under memcheck, racecheck, initcheck, synccheck
      for tool in memcheck racecheck initcheck synccheck; do
        step "${tool}_fused" 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$(find_bin test_cuda_monolithic)" \
          --gtest_filter='CudaMonolithic.FusedDecodeOdd*:CudaMonolithic.FusedDecodeGraph*'
      done
      step racecheck_chain_graph 200 compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$(find_bin test_cuda_monolithic)" --gtest_filter='CudaMonolithic.CudaGraphReplayEqualsDirectRun' ;;
    sanitize)
      filter='Supported/*silu*:Variants/*:CudaExperts.ZeroTokens*:CudaExperts.CudaGraph*'
      step memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$(find_bin test_cuda_experts)" \
        --gtest_filter="$filter"
      step memcheck_router 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$(find_bin test_cuda_router)"
      for tool in memcheck racecheck initcheck; do
        step "${tool}_plan" 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$(find_bin test_cuda_plan)"
      done
      step memcheck_monolithic 300 compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$(find_bin test_cuda_monolithic)" --gtest_filter='CudaMonolithic.AllNegative*:CudaMonolithic.CudaGraph*:CudaMonolithic.FusedDecodeOdd*:CudaMonolithic.FusedDecodeGraph*'
      step racecheck_monolithic 300 compute-sanitizer --tool racecheck --error-exitcode 9 \
        "$(find_bin test_cuda_monolithic)" --gtest_filter='CudaMonolithic.AllNegative*:CudaMonolithic.FusedDecodeOdd*'
      step initcheck_monolithic 300 compute-sanitizer --tool initcheck --error-exitcode 9 \
        "$(find_bin test_cuda_monolithic)" --gtest_filter='CudaMonolithic.FusedDecodeOdd*:CudaMonolithic.FusedDecodeGraph*'
      step synccheck_monolithic 300 compute-sanitizer --tool synccheck --error-exitcode 9 \
        "$(find_bin test_cuda_monolithic)" --gtest_filter='CudaMonolithic.FusedDecodeOdd*' 
      # racecheck_known.py: fails on any hazard but CUTLASS's blockwise-scale report (docs/TESTING.md)
      step racecheck 300 python3 bench/racecheck_known.py -- compute-sanitizer --tool racecheck \
        "$(find_bin test_cuda_experts)" --gtest_filter='Supported/*_silu_*:Variants/*'
      step initcheck 300 compute-sanitizer --tool initcheck --error-exitcode 9 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Supported/*_silu_*:Variants/*' ;;
    sanitize-variants)  # every compiled small-M/grouped variant and the row plan under memcheck, racecheck, initcheck (+ synccheck: the wgmma kernels)
      variants='Variants/*:CudaExperts.SmallMPathIsBatchInvariant:CudaExperts.SmallMTileFits*:CudaExperts.SmallMActivationEpilogue*'
      for tool in memcheck racecheck initcheck; do
        if [ "$tool" = racecheck ]; then  # every hazard fails but CUTLASS's blockwise-scale report (docs/TESTING.md)
          step racecheck_variants 200 python3 bench/racecheck_known.py -- compute-sanitizer --tool racecheck \
            "$(find_bin test_cuda_experts)" --gtest_filter="$variants"
        else
          step "${tool}_variants" 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$(find_bin test_cuda_experts)" \
            --gtest_filter="$variants"
        fi
        step "${tool}_plan" 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$(find_bin test_cuda_plan)"
      done
      # the wgmma kernels' mbarrier rings and warpgroup barriers
      step synccheck_wgmma 200 compute-sanitizer --tool synccheck --error-exitcode 9 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Variants/*wgmma*:CudaExperts.WgmmaKernels*' ;;
    sanitize-batched)  # the batched format's tests under every compute-sanitizer tool
      for tool in memcheck racecheck initcheck synccheck; do
        step "${tool}_batched" 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$(find_bin test_cuda_batched)" \
          --gtest_filter='-CudaBatched.EqualsStandardFormatBitwiseOnBothPaths'
      done ;;
    triton)  # the Triton fused-MoE baseline against its float32 reference (bench/triton_moe.py)
      step triton_selfcheck 300 python3 bench/triton_moe.py ;;
    bench)
      step bench 480 python3 bench/gpu_bench.py --lib "$(find_bin libfusedmoe_c.so)" --out "$OUT" ${BENCH_ARGS:-} ;;
    fuzz)  # the GPU campaign: FUZZ_SEEDS (default 1:10000) CUDA cases, memcheck on the first 40
      step fuzz_cuda $(( ${FUZZ_SECONDS:-400} + 30 )) "$(find_bin fusedmoe-fuzz)" --backend cuda --small --jobs 8 --seeds "${FUZZ_SEEDS:-1:10000}" \
        --max-seconds "${FUZZ_SECONDS:-400}"
      step fuzz_memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$(find_bin fusedmoe-fuzz)" \
        --backend cuda --small --seeds 1:40 ;;
    tests-fp4)  # the fp4 and expert-bias cases alone
      step test_cuda_experts_fp4 300 "$(find_bin test_cuda_experts)" \
        --gtest_filter='Supported/*fp4*:Variants/*:CudaExperts.ExpertBiases*:CudaExperts.RunTwice*:CudaExperts.GptOss*:CudaExperts.Fp4*:CudaExperts.TwoHundred*:CudaExperts.SmallMActivationEpilogue*'
      step test_cuda_monolithic 240 "$(find_bin test_cuda_monolithic)" ;;
    tests-quick)  # the CUDA suites without the two slowest (reference-bound) tests
      step test_cuda_router 120 "$(find_bin test_cuda_router)"
      step test_cuda_plan 120 "$(find_bin test_cuda_plan)"
      step test_cuda_experts_quick 420 "$(find_bin test_cuda_experts)" \
        --gtest_filter='-CudaExperts.RealModelShapes:CudaExperts.MoreThan2To31ElementsPerBuffer'
      step test_cuda_batched 180 "$(find_bin test_cuda_batched)"
      step test_cuda_monolithic 240 "$(find_bin test_cuda_monolithic)" ;;
    nccl)
      step test_nccl 120 "$(find_bin test_nccl)" ;;
    ep-batched)  # the batched format's dispatch + combine next to the standard format's, alternating, same machine
      ngpu=$(nvidia-smi -L | wc -l)
      for i in 1 2; do
        for fmt in standard batched; do
          for model in deepseek-v3 qwen3-30b-a3b; do
            step "ep_${model}_${fmt}_$i" 150 "$(find_bin fusedmoe-bench)" --ep "$ngpu" --backend cuda --model "$model" \
              --format "$fmt" --tokens 1,16,128
          done
        done
      done ;;
    sanitize-ep)  # the EP kernels (NVLink peer-window and NCCL all-to-all) on 2 GPUs under memcheck
      # (NCCL's own kernels and its probing of kernel images are left out: its LL protocol reads
      # buffers it never initialised, by design; its initialisation needs a longer timeout)
      for tool in ${EP_SANITIZERS:-memcheck}; do  # initcheck: see docs/TESTING.md
        step "${tool}_ep" 280 env FUSEDMOE_TEST_NCCL_TIMEOUT_S=240 compute-sanitizer --tool "$tool" \
          --report-api-errors no --kernel-name-exclude kns=ncclDevKernel --error-exitcode 9 \
          "$(find_bin test_cuda_ep)" --gtest_filter='*fp8_a2a_rank0_empty:*bf16_a2a_batched_all_on_last_rank'
      done ;;
    ep)  # expert parallelism over NCCL on every GPU here: tests, then dispatch/combine next to raw NCCL
      ngpu=$(nvidia-smi -L | wc -l)
      step test_cuda_ep 240 "$(find_bin test_cuda_ep)"
      step ep_bench_deepseek 200 "$(find_bin fusedmoe-bench)" --ep "$ngpu" --backend cuda --model deepseek-v3 \
        --tokens 1,16,128,512
      step ep_bench_qwen3 150 "$(find_bin fusedmoe-bench)" --ep "$ngpu" --backend cuda --model qwen3-30b-a3b \
        --tokens 1,16,128,512 ;;
    python)
      step python_build 560 bash -c "while kill -0 $pybuild 2>/dev/null; do sleep 2; done; ls $pydir/fusedmoe/_C*.so"
      python3 -m pytest --version >/dev/null 2>&1 || pip install -q --no-index --find-links "$BIN/wheels" pytest >>"$log" 2>&1
      pypath=$pydir
      if [ -f "$BIN/cupy.tar.xz" ]; then  # cupy for python/tests/test_cupy.py (make_gpu_bin.sh --cupy)
        mkdir -p build-py-cupy && tar -xJf "$BIN/cupy.tar.xz" -C build-py-cupy && pypath=$pydir:$PWD/build-py-cupy
      fi
      step pytest 300 env PYTHONPATH="$pypath" python3 -m pytest -q -rs -s python/tests
      # a failing error path, alone, with a native backtrace where gdb exists
      probe='import fusedmoe._C as C
try:
    C.backend_available("nope")
except ValueError as e:
    print("error path ok:", e)'
      step python_error_probe 60 env PYTHONPATH="$pydir" python3 -X faulthandler -c "$probe"
      { ldd "$pydir"/fusedmoe/_C*.so | grep -E "stdc|gcc_s"; command -v gdb; } >>"$log" 2>&1
      if command -v gdb >/dev/null; then
        step python_error_gdb 90 env PYTHONPATH="$pydir" gdb -batch -ex run -ex bt --args python3 -c "$probe"
      fi ;;
    profile)  # ncu per-kernel time, DRAM throughput and grid of one forward (PROFILE="model:tokens ...")
      for mt in ${PROFILE:-qwen3-30b-a3b:1 deepseek-v3:1 qwen3-30b-a3b-nvfp4:16}; do
        step "ncu_${mt//:/_}" 150 ncu --clock-control none --launch-count "${PROFILE_KERNELS:-14}" \
          -k "regex:${PROFILE_REGEX:-route|plan|small_m|activation|finalize|quantize|gather|dequant|scale_rows|fused_decode}" \
          --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active \
          python3 bench/gpu_bench.py --lib "$(find_bin libfusedmoe_c.so)" --out "$OUT/profile" --no-loop --reps 1 \
          --models "${mt%%:*}" --tokens "${mt##*:}"
      done ;;
    probe)  # weight-streaming probe: access patterns of the decode kernels vs a device copy (bf16 and fp8 rows)
      step probe_bf16_rows 60 "$(find_bin fusedmoe-stream-probe)" 256 4096
      step probe_fp8_rows 60 "$(find_bin fusedmoe-stream-probe)" 256 7168 ;;
    ab)  # same-run A/B: $BIN/base/libfusedmoe_c.so (make_gpu_bin.sh --base LIB) against this tree's library
      for lib in base/libfusedmoe_c.so libfusedmoe_c.so; do
        step "bench_${lib%%/*}" 200 python3 bench/gpu_bench.py --lib "$BIN/$lib" --out "$OUT/${lib%%/*}" --no-loop \
          ${BENCH_ARGS:---models qwen3-30b-a3b,mixtral-8x7b,deepseek-v3 --tokens 1,16}
      done ;;
    gate)  # bench/perf_gate.py: this tree's library on the fixed points against bench/results/perf_baseline-<card>.json
      # (GATE_ARGS: more options). To record a baseline, copy the run's JSON from $OUT/gate to that file.
      step perf_gate 400 python3 bench/perf_gate.py run --lib "$(find_bin libfusedmoe_c.so)" --out "$OUT/gate" \
        ${GATE_ARGS:-} ;;
    bits)  # output bits of $BIN/base/libfusedmoe_c.so against this tree's library (BITS_ARGS: bitcompare.py's options)
      step bitcompare 300 python3 bench/bitcompare.py "$BIN/base/libfusedmoe_c.so" "$(find_bin libfusedmoe_c.so)" \
        ${BITS_ARGS:-} ;;
    stalls)  # ncu warp-state and source stall sections of the kernels PROFILE_REGEX names (PROFILE as for profile),
      # the report and its per-instruction source table in $OUT, and bench/ncu_stalls.py's summary of it in the log
      for mt in ${PROFILE:-qwen3-30b-a3b:1}; do
        rep="$OUT/stalls_${mt//:/_}"
        step "stalls_${mt//:/_}" 200 ncu --clock-control none --launch-skip "${PROFILE_SKIP:-2}" \
          --launch-count "${PROFILE_KERNELS:-1}" -k "regex:${PROFILE_REGEX:-fused_decode}" \
          --section WarpStateStats --section SourceCounters --section MemoryWorkloadAnalysis --section Occupancy \
          --section LaunchStats --section SpeedOfLight -o "$rep" \
          python3 bench/gpu_bench.py --lib "$(find_bin libfusedmoe_c.so)" --out "$OUT/profile" --no-loop --reps 1 \
          --models "${mt%%:*}" --tokens "${mt##*:}"
        step "stalls_details_${mt//:/_}" 60 ncu -i "$rep.ncu-rep" --page details
        step "stalls_source_${mt//:/_}" 60 bash -c "ncu -i '$rep.ncu-rep' --page source --csv --print-source sass \
          >'$rep.csv' && python3 bench/ncu_stalls.py '$rep.csv' --top 16 --context 3"
      done ;;
    bench-no-pdl)
      step bench_no_pdl 300 env FUSEDMOE_PDL=0 python3 bench/gpu_bench.py --lib "$(find_bin libfusedmoe_c.so)" \
        --out "$OUT" --tag no-pdl --no-loop ${BENCH_ARGS:-} ;;
  esac
done
grep -E "^\[  (FAILED|PASSED) |^\[  FAILED  \]|ERROR SUMMARY|RACECHECK SUMMARY|^model|^#|^(mixtral|qwen3|deepseek|gpt-oss)-?[a-z0-9-]* +[0-9]|^fusedmoe-fuzz|passed, [0-9]+ failed|^FAIL|repro:|^[0-9]+ (passed|failed)|^(FAILED|ERROR) |: relative logits|^ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+|^fusedmoe-bench --ep|^\(CUDA graphs|^error path ok|^#[0-9]+ +0x|^(memcpy d2d|linear<|smallm<|rowrun<|bulk<)|^bit-equal$| cases differ$" "$log" | tail -70
printf '%s\n' "${summary[@]}"
