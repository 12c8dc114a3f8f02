// Device helpers for fp8 e4m3: the dynamic scale recipe of the CPU path and 16-byte packing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace fusedmoe::cuda {

constexpr float kE4m3Max = 448.0f;

// scale = max(amax, 1e-10) / 448, as quantize_activations_fp8.
__device__ inline float fp8_scale_from_amax(float amax) { return fmaxf(amax, 1e-10f) / kE4m3Max; }

// x / scale as IEEE division rounds it, for many x over one scale: one reciprocal, then per value a product and its
// FMA correction (Markstein; |x / scale| stays far from overflow and underflow here, where that holds exactly),
// instead of a division subroutine per value. Where the correction is not finite (x or scale infinite, or NaN) the
// product is the IEEE quotient already (inf, 0 or NaN).
struct DivideBy {
  float scale, inv;
  __device__ explicit DivideBy(float s) : scale(s), inv(1.0f / s) {}
  __device__ float operator()(float x) const {
    const float q = x * inv;
    const float corrected = fmaf(fmaf(-q, scale, x), inv, q);
    return isfinite(corrected) ? corrected : q;
  }
};

// 8 values / scale as e4m3 bytes (round to nearest even, saturating at +-448, NaN stays NaN), value i in byte i % 4
// of word i / 4; two values per conversion (cvt.rn.satfinite.e4m3x2.f32: the first of the pair in the low byte).
__device__ inline uint2 pack_e4m3x8(const float (&v)[8], float scale) {
  const DivideBy div(scale);
  uint32_t pairs[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    pairs[i] = __nv_cvt_float2_to_fp8x2(make_float2(div(v[2 * i]), div(v[2 * i + 1])), __NV_SATFINITE, __NV_E4M3);
  return make_uint2(pairs[0] | pairs[1] << 16, pairs[2] | pairs[3] << 16);
}

// The largest of a over this lane's aligned group of kLanes lanes (a power of two up to 32: 16 a half-warp, 32 the
// warp); the whole warp must call it.
template <int kLanes>
__device__ inline float lanes_max(float a) {
  static_assert(kLanes >= 1 && kLanes <= 32 && (kLanes & (kLanes - 1)) == 0);
#pragma unroll
  for (int off = kLanes / 2; off > 0; off >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, off));
  return a;
}

// The largest of a over the block's kThreads threads (each must call it; scratch: kThreads / 32 floats of shared
// memory).
template <int kThreads>
__device__ inline float block_max(float a, float* scratch) {
  a = lanes_max<32>(a);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = a;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) a = fmaxf(a, scratch[i]);
  return a;
}

}  // namespace fusedmoe::cuda
