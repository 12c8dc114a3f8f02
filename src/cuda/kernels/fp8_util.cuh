// Device helpers for fp8 e4m3: the dynamic scale recipe of the CPU path and 16-byte packing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace fusedmoe::cuda {

constexpr float kE4m3Max = 448.0f;

// scale = max(amax, 1e-10) / 448, as quantize_activations_fp8.
__device__ inline float fp8_scale_from_amax(float amax) { return fmaxf(amax, 1e-10f) / kE4m3Max; }

// Round to nearest even, saturating at +-448 (NaN stays NaN).
__device__ inline uint8_t to_e4m3(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

// 8 values / scale as e4m3 bytes, value i in byte i % 4 of word i / 4.
__device__ inline uint2 pack_e4m3x8(const float (&v)[8], float scale) {
  uint2 packed = make_uint2(0, 0);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    packed.x |= uint32_t(to_e4m3(v[i] / scale)) << (8 * i);
    packed.y |= uint32_t(to_e4m3(v[4 + i] / scale)) << (8 * i);
  }
  return packed;
}

// The largest of a over the 16 lanes of this half-warp (the whole warp must call it).
__device__ inline float half_warp_max(float a) {
#pragma unroll
  for (int off = 8; off > 0; off >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, off));
  return a;
}

// The largest of a over the block's kThreads threads (each must call it; scratch: kThreads / 32 floats of shared
// memory).
template <int kThreads>
__device__ inline float block_max(float a, float* scratch) {
  a = half_warp_max(fmaxf(a, __shfl_xor_sync(0xffffffffu, a, 16)));
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = a;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) a = fmaxf(a, scratch[i]);
  return a;
}

}  // namespace fusedmoe::cuda
