// Device helpers for packed fp4 e2m1 weights (two values per byte, element 2i in the low
// nibble): one byte to two bf16 by bit placement (a bf16x2 word, element 2i in the low half, as
// bf16 pairs of activations lie in memory), and exact bf16x2 scaling.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace fusedmoe::cuda {

__device__ inline uint32_t mul_bf16x2(uint32_t a, __nv_bfloat162 s) {
  const __nv_bfloat162 p = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), s);
  return *reinterpret_cast<const uint32_t*>(&p);
}

// Eight e2m1 values of one packed word (element i in nibble i) as four bf16x2 words, out[q] =
// elements 2q (low half) and 2q + 1, each value times 2^-126 — no table, 3 instructions a pair:
// a prmt puts pair q's two nibbles at bits 0..3 and 16..19 (zero elsewhere: a selector with bit
// 3 set copies the sign of a byte below 0x80, i.e. 0); one multiply by 64 + 4096 adds the copy
// shifted by 6 (magnitude bits m e0 e1 to bf16 bits 6..8) and the copy shifted by 12 (sign to bit
// 15) — they share no bits, so the sum is their OR — and one AND keeps those bits of each half.
// The bf16 then reads 2^(e-127) (1 + m/2) for e >= 1 and, as a subnormal, m 2^-127 for e = 0:
// e2m1's value times 2^-126 in both cases. Multiplying by 2^126 (or folding it into the scale)
// gives the value exactly: bf16 multiplies keep subnormal inputs on sm_90 (the fp4 tests would
// catch a flush: code 1 = 0.5 would come out 0).
__device__ inline void e2m1x8_bf16_times_2m126(uint32_t w, uint32_t (&out)[4]) {
  const uint32_t even = w & 0x0F0F0F0Fu, odd = (w >> 4) & 0x0F0F0F0Fu;  // one nibble per byte
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t x;  // [even byte q, 0, odd byte q, 0]
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(x) : "r"(even), "r"(odd), "r"(0x8480u + 0x1111u * q));
    out[q] = (x * 4160u) & 0x81C081C0u;
  }
}

// bf16 2^126 in both halves.
__device__ inline __nv_bfloat162 bf16x2_two_pow_126() {
  return __halves2bfloat162(__ushort_as_bfloat16(0x7E80), __ushort_as_bfloat16(0x7E80));
}

// The bf16x2 multiplier taking e2m1x8_bf16_times_2m126's output to value * 2^(u-127) for a ue8m0
// scale u in one multiply: 2^(u-1), finite for u <= 128 (scales up to 2); `big` says when u is
// larger (or NaN) and the caller must multiply by 2^126 and the scale in two steps instead.
__device__ inline __nv_bfloat162 ue8m0_multiplier(uint32_t u, bool& big) {
  big = u > 128;
  const uint32_t bits = big ? 0x7E80u : (u + 126) << 7;
  return __halves2bfloat162(__ushort_as_bfloat16(bits), __ushort_as_bfloat16(bits));
}

inline constexpr float kNvEpilogueFactor = 256.0f;  // 2^8

// nvfp4: the multipliers of two e4m3 group scales s0, s1 (bytes 0 and 1 of two_bytes) for e2m1x8_bf16_times_2m126's
// output, s * 2^118 in f32 (finite: |s| <= 448 < 2^9; rounded to bf16 by the caller, exactly), so that the products
// come out as value * s * 2^-8; the missing 2^8 is folded into the f32 global scale of the epilogue. Exact: e2m1 has
// 2 significant bits, e4m3 4. One conversion of the byte pair to f16x2 (e4m3's range, subnormals included, lies inside
// f16's normal numbers; 0x7f / 0xff stay NaN), two widenings, two multiplies: about 3.5 instructions a scale where
// placing each scale's bits in an f32 took 9 (session 76). Also a host function, so that test_fp4_util checks it in CI.
__host__ __device__ inline float2 nv_multipliers_f32(uint32_t two_bytes) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two_bytes & 0xffffu), __NV_E4M3);
  const float2 f = __half22float2(__half2(h));
  return make_float2(f.x * 0x1p118f, f.y * 0x1p118f);
}

}  // namespace fusedmoe::cuda
