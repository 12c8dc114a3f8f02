// fp4 weights to bf16 for the grouped-GEMM path of the nvfp4 and mxfp4 experts: experts [e0, e0 + count) of
// W [E, N, K/2] (packed e2m1 in the sm90 packing, formats.h) -> bf16 [count, N, K], each value times its group
// scale, rounded once: mxfp4 multiplies by the ue8m0 scale exactly in bf16x2; nvfp4 by the f32 product of the e4m3
// scale and the expert's global scale, as the reference takes it. Per step a thread turns 4 packed words (32
// values) into 16 4-byte stores: the warp's words of one step are 8 whole 32-value segments (8 rows of one segment
// column of a 16-row tile), each word's 4 bf16 pairs spread over its segment, the segment's 4 lanes filling it.
// Grid-stride over the chunk, 32-bit indices (on H200 the nvfp4 kernel ran at 54% of DRAM peak and 78% of SM issue
// with 64-bit ones). The bf16 rows keep the weights' row order (the gated GEMM1 reads w13's gate and up blocks where
// they lie, gate_up_mainloop_sm90.cuh).
// Limits: K % 32 == 0.
#include "cuda/cuda_util.h"
#include "cuda/kernels/fp4_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 8192;

// One packed word (sm90 packing: the checkpoint's pairs c + 4q of a 32-value segment, formats.h) to 4 bf16
// pairs, pair q times its group's scale: pairs q = 0, 1 lie in the segment's first 16 values, q = 2, 3 in the
// second (nvfp4: s_lo, s_hi, each times the expert's global scale; mxfp4: s_lo for all 32).
template <bool kNv>
__device__ __forceinline__ void dequant_word(uint32_t packed, uint8_t s_lo, uint8_t s_hi, float global_scale,
                                             uint32_t (&o)[4]) {
  e2m1x8_sm90_bf16_times_2m126(packed, o);
  if constexpr (kNv) {
    const float sc[2] = {fp8_e4m3_to_float(s_lo) * global_scale, fp8_e4m3_to_float(s_hi) * global_scale};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint32_t pair = mul_bf16x2(o[q], bf16x2_two_pow_126());
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pair));
      const __nv_bfloat162 r = __floats2bfloat162_rn(f.x * sc[q / 2], f.y * sc[q / 2]);
      o[q] = *reinterpret_cast<const uint32_t*>(&r);
    }
  } else {
    bool big;
    const __nv_bfloat162 m = ue8m0_multiplier(s_lo, big);
    const __nv_bfloat162 sc = __float2bfloat162_rn(big ? ue8m0_to_float(s_lo) : 1.0f);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      o[q] = mul_bf16x2(o[q], m);
      if (big) o[q] = mul_bf16x2(o[q], sc);
    }
  }
}

template <bool kNv>
__global__ void __launch_bounds__(kThreads) dequant_fp4_kernel(const uint8_t* w, const uint8_t* scales,
                                                               const float* global, int64_t e0, uint32_t total,
                                                               uint32_t N, uint32_t words_per_row, bf16* out) {
  constexpr int kGroup = kNv ? 16 : 32;
  pdl_wait();
  pdl_launch_dependents();
  const uint32_t K = words_per_row * 8, tile_words = kFp4TileRows * words_per_row;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(w + e0 * N * (K / 2));
  const uint8_t* src_scales = scales + e0 * N * (K / kGroup);
  const float* gscale = kNv ? global + e0 : nullptr;
  const uint32_t warp_base = (blockIdx.x * kThreads + (threadIdx.x & ~31u)) * 4, lane = threadIdx.x & 31;
  for (uint32_t base = warp_base; base < total; base += gridDim.x * kThreads * 4) {
    uint32_t packed[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t i = base + 32 * j + lane;
      if (i < total) packed[j] = __ldg(src + i);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t i = base + 32 * j + lane;
      if (i >= total) break;
      // Word i of the packing: word c of segment column seg of row rr of 16-row tile `tile` (formats.h).
      const uint32_t tile = i / tile_words, t = i - tile * tile_words;
      const uint32_t row = tile * kFp4TileRows + (t / 4) % kFp4TileRows, k0 = t / (4 * kFp4TileRows) * 32, c = t & 3;
      const uint8_t* sp = src_scales + size_t(row) * (K / kGroup) + k0 / kGroup;
      uint32_t o[4];
      dequant_word<kNv>(packed[j], __ldg(sp), kNv ? __ldg(sp + 1) : 0, kNv ? __ldg(gscale + row / N) : 0.0f, o);
      uint32_t* dst = reinterpret_cast<uint32_t*>(out + size_t(row) * K + k0);  // the segment's 16 bf16 pairs
#pragma unroll
      for (int q = 0; q < 4; ++q) dst[c + 4 * q] = o[q];
    }
  }
}

}  // namespace

void launch_dequant_fp4(SmallMWeights format, const uint8_t* w, const uint8_t* scales, const float* global, int64_t e0,
                        int64_t count, int64_t N, int64_t K, bf16* out, cudaStream_t s) {
  FMOE_CHECK(K % 32 == 0, "fp4 dequantization needs K % 32 == 0, got K=", K);
  const int64_t words = count * N * (K / 8);
  if (words == 0) return;
  FMOE_CHECK(words < (int64_t(1) << 32) - int64_t(kMaxBlocks) * kThreads * 4,
             "fp4 dequantization takes fewer than 2^32 packed words per chunk, got ", words);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>((words + 4 * kThreads - 1) / (4 * kThreads), kMaxBlocks)));
  const auto total = static_cast<uint32_t>(words), n32 = static_cast<uint32_t>(N), wpr = static_cast<uint32_t>(K / 8);
  if (format == SmallMWeights::nvfp4)
    launch(dequant_fp4_kernel<true>, grid, dim3(kThreads), s, w, scales, global, e0, total, n32, wpr, out);
  else
    launch(dequant_fp4_kernel<false>, grid, dim3(kThreads), s, w, scales, global, e0, total, n32, wpr, out);
}

}  // namespace fusedmoe::cuda
