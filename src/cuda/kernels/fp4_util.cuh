// Device helpers for packed fp4 e2m1 weights (two values per byte, element 2i in the low
// nibble): a 256-entry table turning one byte into two bf16 (a bf16x2 word, element 2i in the low
// half, as bf16 pairs of activations lie in memory), and exact bf16x2 scaling.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace fusedmoe::cuda {

// bf16 bits of an e2m1 nibble: magnitude codes 2..7 are 2^((c >> 1) - 1) * (1 + (c & 1) / 2)
// (bf16 exponent (c >> 1) + 126, top mantissa bit c & 1); code 1 is 0.5 and code 0 is zero.
__device__ inline uint32_t e2m1_bf16_bits(uint32_t nibble) {
  const uint32_t c = nibble & 7;
  const uint32_t magnitude = c >= 2 ? (((c >> 1) + 126) << 7) | ((c & 1) << 6) : c == 1 ? 0x3F00u : 0u;
  return magnitude | ((nibble & 8) << 12);
}

// Two bf16 of one packed byte: element 2i (low nibble) in the low half, as X's bf16 pairs.
__device__ inline uint32_t e2m1_pair_bf16(uint32_t byte) {
  return e2m1_bf16_bits(byte & 0xf) | (e2m1_bf16_bits(byte >> 4) << 16);
}

__device__ inline uint32_t mul_bf16x2(uint32_t a, __nv_bfloat162 s) {
  const __nv_bfloat162 p = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), s);
  return *reinterpret_cast<const uint32_t*>(&p);
}

// Two bf16 of one packed byte without a table: the nibble's sign goes to bit 15 and its three
// magnitude bits (e1 e0 m) to bits 8..6 of a bf16, which then reads 2^(e-127) (1 + m/2) for e >= 1
// and, as a subnormal, m 2^-127 for e = 0 — e2m1's value times 2^-126 in both cases. One multiply
// by 2^126 (exact, if bf16 multiplies keep subnormal inputs) gives the value. Element 2i (low
// nibble) in the low half. `t` holds the byte in bits 0..7 (higher bits are ignored).
__device__ inline uint32_t e2m1_pair_bf16_alu(uint32_t t) {
  const uint32_t x = (t & 0xFu) | ((t << 12) & 0xF0000u);  // low nibble | high nibble << 16
  const uint32_t placed = ((x & 0x00070007u) << 6) | ((x & 0x00080008u) << 12);
  const __nv_bfloat162 two126 = __halves2bfloat162(__ushort_as_bfloat16(0x7E80), __ushort_as_bfloat16(0x7E80));
  const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&placed), two126);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// table[b] = e2m1_pair_bf16(b) for b in 0..255, filled by the block's `threads` threads.
__device__ inline void fill_e2m1_pair_table(uint32_t* table, int threads) {
  for (int i = threadIdx.x; i < 256; i += threads) table[i] = e2m1_pair_bf16(i);
  __syncthreads();
}

}  // namespace fusedmoe::cuda
