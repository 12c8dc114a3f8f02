// Device helpers for packed fp4 e2m1 weights in the sm90 packing (fusedmoe/formats.h): a pair of values to a
// bf16x2 word by bit placement (element 2i in the low half, as bf16 pairs of activations lie in memory), and
// exact bf16x2 scaling.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {

__device__ inline uint32_t mul_bf16x2(uint32_t a, __nv_bfloat162 s) {
  const __nv_bfloat162 p = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), s);
  return *reinterpret_cast<const uint32_t*>(&p);
}

// The fp4 kernels read their weights in the sm90 packing (fusedmoe/formats.h: fp4_pack_segment_sm90), made
// from the checkpoint's order once, by fusedmoe::pack_fp4_weights_sm90 or by the CUDA experts' own copy.
inline constexpr uint32_t kBf16PairMask = 0x81C081C0u;  // e2m1 bits 0..2 at bf16 bits 6..8, bit 3 at 15; both halves

// The four pairs of one sm90-packed word as bf16x2 words, out[q] = values 2q (low half) and 2q + 1, each value
// times 2^-126: magnitude bits m e0 e1 at bf16 bits 6..8 and the sign at bit 15 read 2^(e-127) (1 + m/2) for
// e >= 1 and, as a subnormal, m 2^-127 for e = 0 — e2m1's value times 2^-126. Multiplying by 2^126 (or folding
// it into the scale) gives the value exactly: bf16 multiplies keep subnormal inputs on sm_90 (the fp4 tests
// would catch a flush: code 1 = 0.5 would come out 0). Pair 0 lies in place (one AND), pairs 1 and 2 a
// rotation away (rotate, AND), pair 3 takes one multiply by 2^3 + 2^8 + 2^14, whose three shifted copies
// carry nothing into the kept bits (all 256 codes checked, tests/test_fp4_util.cu). 8 instructions a word
// (7 integer-ALU, 1 IMAD), against 15 (11 and 4) for the checkpoint's order.
// e2m1x2_sm90_bf16_times_2m126<q>(w) is out[q] alone, for callers that take a word's pairs one at a time.
template <int q>
__host__ __device__ inline uint32_t e2m1x2_sm90_bf16_times_2m126(uint32_t w) {
  static_assert(q >= 0 && q < 4, "a sm90-packed word holds four pairs");
  if constexpr (q == 0) return w & kBf16PairMask;
  if constexpr (q == 1) return ((w << 10) | (w >> 22)) & kBf16PairMask;
  if constexpr (q == 2) return ((w << 13) | (w >> 19)) & kBf16PairMask;
  return ((w & 0x001B001Bu) * 0x4108u) & kBf16PairMask;
}
__host__ __device__ inline void e2m1x8_sm90_bf16_times_2m126(uint32_t w, uint32_t (&out)[4]) {
  out[0] = e2m1x2_sm90_bf16_times_2m126<0>(w);
  out[1] = e2m1x2_sm90_bf16_times_2m126<1>(w);
  out[2] = e2m1x2_sm90_bf16_times_2m126<2>(w);
  out[3] = e2m1x2_sm90_bf16_times_2m126<3>(w);
}

// bf16 2^126 in both halves.
__device__ inline __nv_bfloat162 bf16x2_two_pow_126() {
  return __halves2bfloat162(__ushort_as_bfloat16(0x7E80), __ushort_as_bfloat16(0x7E80));
}

// The bf16x2 multiplier taking e2m1x8_sm90_bf16_times_2m126's output to value * 2^(u-127) for a ue8m0
// scale u in one multiply: 2^(u-1), finite for u <= 128 (scales up to 2); `big` says when u is
// larger (or NaN) and the caller must multiply by 2^126 and the scale in two steps instead.
__device__ inline __nv_bfloat162 ue8m0_multiplier(uint32_t u, bool& big) {
  big = u > 128;
  const uint32_t bits = big ? 0x7E80u : (u + 126) << 7;
  return __halves2bfloat162(__ushort_as_bfloat16(bits), __ushort_as_bfloat16(bits));
}

inline constexpr float kNvEpilogueFactor = 256.0f;  // 2^8

// nvfp4: the multipliers of two e4m3 group scales s0, s1 (bytes 0 and 1 of two_bytes) for
// e2m1x8_sm90_bf16_times_2m126's output, s * 2^118 in f32 (finite: |s| <= 448 < 2^9; rounded to bf16 by the caller,
// exactly), so that the products come out as value * s * 2^-8; the missing 2^8 is folded into the f32 global scale of
// the epilogue. Exact: e2m1 has 2 significant bits, e4m3 4. One conversion of the byte pair to f16x2 (e4m3's range,
// subnormals included, lies inside f16's normal numbers; 0x7f / 0xff stay NaN), two widenings, two multiplies: about
// 3.5 instructions a scale where placing each scale's bits in an f32 took 9 (session 76). Also a host function, so
// that test_fp4_util checks it in CI.
__host__ __device__ inline float2 nv_multipliers_f32(uint32_t two_bytes) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes & 0xffffu), __NV_E4M3);
  const float2 f = __half22float2(__half2(h));
  return make_float2(f.x * 0x1p118f, f.y * 0x1p118f);
}

}  // namespace fusedmoe::cuda
