// Packed fp4 weights from the checkpoint's order (element 2i of a row in the low nibble of byte i) to the sm90
// packing the CUDA kernels read (fusedmoe/formats.h: per 16-byte segment, word c holds bytes c, c + 4, c + 8,
// c + 12, its bits placed for a cheap unpacking), in place. A thread per segment, one 16-byte load and store; run
// once, by pack_fp4_weights_sm90 or on the CUDA experts' own copy. Limits: the buffer is 16-byte aligned and a
// whole number of segments.
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp4_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) pack_fp4_sm90_kernel(uint4* segments, int64_t count) {
  pdl_wait();
  for (int64_t i = blockIdx.x * int64_t(kThreads) + threadIdx.x; i < count; i += int64_t(gridDim.x) * kThreads) {
    const uint4 v = segments[i];
    const uint32_t in[4] = {v.x, v.y, v.z, v.w};
    uint32_t out[4];
    fp4_pack_segment_sm90(in, out);
    segments[i] = make_uint4(out[0], out[1], out[2], out[3]);
  }
}

}  // namespace

void launch_pack_fp4_sm90(void* w, int64_t bytes, cudaStream_t s) {
  FMOE_CHECK(reinterpret_cast<uintptr_t>(w) % 16 == 0 && bytes % 16 == 0,
             "the sm90 fp4 packing takes 16-byte aligned whole 16-byte segments, got ", bytes, " bytes at ", w);
  const int64_t count = bytes / 16;
  if (count == 0) return;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((count + kThreads - 1) / kThreads, 8192)));
  launch(pack_fp4_sm90_kernel, grid, dim3(kThreads), s, static_cast<uint4*>(w), count);
}

}  // namespace fusedmoe::cuda
