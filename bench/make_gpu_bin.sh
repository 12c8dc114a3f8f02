#!/usr/bin/env bash
# Builds, on the CPU machine, everything a GPU call needs and gathers it in gpu_bin/ (git-ignored;
# pass carry=["gpu_bin"] to the device tool): the CUDA test binaries, fusedmoe-fuzz,
# fusedmoe-bench and libfusedmoe_c.so (packed), the CUTLASS headers packed (bench/gpu_session.sh unpacks
# them for its Python build) and the pinned pytest/nanobind wheels (the GPU machine reaches no
# package registry). Then: BIN=gpu_bin bash bench/gpu_session.sh <steps>.
# With --base LIB it also packs a baseline libfusedmoe_c.so (built from another commit) for gpu_session.sh ab.
# With --cupy it also packs cupy (pinned, for the GPU machine's Python 3.12) into gpu_bin/cupy.tar.xz
# (~52 MB: the tree and the carry together must stay under 64 MiB) so the python step can run python/tests/test_cupy.py.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/gpu_bin/' .git/info/exclude 2>/dev/null || echo '/gpu_bin/' >>.git/info/exclude
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DFUSEDMOE_CUDA=ON >/dev/null
cmake --build build-cuda --target test_cuda_router test_cuda_plan test_cuda_experts test_cuda_monolithic test_cuda_batched test_cuda_ep test_nccl \
  fusedmoe-fuzz fusedmoe-bench fusedmoe_c fusedmoe-stream-probe
rm -rf gpu_bin && mkdir -p gpu_bin/wheels
# The binaries travel xz-packed (each embeds the same CUDA kernels: 66 MB loose, ~8 MB packed);
# bench/gpu_session.sh unpacks gpu_bin/bin.tar.xz where it finds one.
tar -cJf gpu_bin/bin.tar.xz --transform 's|.*/||' build-cuda/tests/test_cuda_router build-cuda/tests/test_cuda_plan build-cuda/tests/test_cuda_experts \
  build-cuda/tests/test_cuda_monolithic build-cuda/tests/test_cuda_batched build-cuda/tests/test_cuda_ep build-cuda/tests/test_nccl \
  build-cuda/tools/fusedmoe-fuzz build-cuda/tools/fusedmoe-bench build-cuda/tools/fusedmoe-stream-probe \
  build-cuda/libfusedmoe_c.so
cutlass=$(ls -d third_party/cutlass-* | head -1)
tar -cJf gpu_bin/cutlass.tar.xz -C third_party "$(basename "$cutlass")"
python3 -m pip download -q -d gpu_bin/wheels pytest==9.2.0
python3 -m pip download -q --no-deps -d gpu_bin/wheels nanobind==2.9.2
if [ "${1:-}" = "--cupy" ]; then  # unpacked wheels, xz-packed (the wheel itself is 69 MB)
  stage=$(mktemp -d)
  for req in cupy-cuda13x==14.2.0 cuda-pathfinder==1.9.1; do
    python3 -m pip download -q --no-deps -d "$stage/whl" "$req" --python-version 3.12 --only-binary=:all: \
      --platform manylinux2014_x86_64
  done
  for w in "$stage"/whl/*.whl; do python3 -m zipfile -e "$w" "$stage/site"; done
  tar -cf - -C "$stage/site" . | xz -9e -T2 >gpu_bin/cupy.tar.xz  # -9e: the tree + carry must fit 64 MiB
  rm -rf "$stage"
fi
if [ "${1:-}" = "--base" ]; then  # a baseline C library built earlier (path $2), for gpu_session.sh ab
  mkdir -p gpu_bin/base && xz -T2 -c "$2" >gpu_bin/base/libfusedmoe_c.so.xz
fi
du -sh gpu_bin
