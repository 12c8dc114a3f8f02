// fp4 weights to bf16 for the grouped-GEMM path of the nvfp4 and mxfp4 experts: experts
// [e0, e0 + count) of W [E, N, K/2] (packed e2m1, element 2i in the low nibble) -> bf16
// [count, N, K], each value times its group scale (nvfp4: e4m3 per 16 times the expert's f32
// global scale, their f32 product as the reference takes it; mxfp4: ue8m0 per 32), rounded once.
// One thread per 16 packed bytes (32 values, 64 bytes out). Limits: K % 32 == 0.
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;

template <bool kNv>
__global__ void __launch_bounds__(kThreads) dequant_fp4_kernel(const uint8_t* w, const uint8_t* scales,
                                                               const float* global, int64_t e0, int64_t count,
                                                               int64_t N, int64_t K, bf16* out) {
  constexpr int kGroup = kNv ? 16 : 32;
  pdl_wait();
  pdl_launch_dependents();
  const int64_t slices_per_row = K / 32;
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;  // slice of 32 values, from e0
  if (i >= count * N * slices_per_row) return;
  const int64_t row = i / slices_per_row, slice = i % slices_per_row;  // row within the chunk
  const int64_t e = e0 + row / N;
  const int64_t src_row = e0 * N + row;
  const uint4 packed = *reinterpret_cast<const uint4*>(w + src_row * (K / 2) + slice * 16);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&packed);
  const uint8_t* s = scales + src_row * (K / kGroup) + slice * (32 / kGroup);
  float scale[2];
  if constexpr (kNv) {
    scale[0] = fp8_e4m3_to_float(s[0]) * global[e];
    scale[1] = fp8_e4m3_to_float(s[1]) * global[e];
  } else {
    scale[0] = scale[1] = ue8m0_to_float(s[0]);
  }
  __align__(16) bf16 o[32];
#pragma unroll
  for (int q = 0; q < 16; ++q) {
    const float sc = scale[q / 8];
    o[2 * q] = __float2bfloat16_rn(fp4_e2m1_to_float(bytes[q] & 0xf) * sc);
    o[2 * q + 1] = __float2bfloat16_rn(fp4_e2m1_to_float(bytes[q] >> 4) * sc);
  }
  uint4* dst = reinterpret_cast<uint4*>(out + row * K + slice * 32);
#pragma unroll
  for (int j = 0; j < 4; ++j) dst[j] = reinterpret_cast<const uint4*>(o)[j];
}

}  // namespace

void launch_dequant_fp4(SmallMWeights format, const uint8_t* w, const uint8_t* scales, const float* global, int64_t e0,
                        int64_t count, int64_t N, int64_t K, bf16* out, cudaStream_t s) {
  FMOE_CHECK(K % 32 == 0, "fp4 dequantization needs K % 32 == 0, got K=", K);
  const int64_t threads = count * N * (K / 32);
  if (threads == 0) return;
  const dim3 grid(static_cast<unsigned>((threads + kThreads - 1) / kThreads));
  if (format == SmallMWeights::nvfp4)
    launch(dequant_fp4_kernel<true>, grid, dim3(kThreads), s, w, scales, global, e0, count, N, K, out);
  else
    launch(dequant_fp4_kernel<false>, grid, dim3(kThreads), s, w, scales, global, e0, count, N, K, out);
}

}  // namespace fusedmoe::cuda
