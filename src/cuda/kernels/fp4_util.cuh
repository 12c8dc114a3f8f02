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

// table[b] = e2m1_pair_bf16(b) for b in 0..255, filled by the block's `threads` threads.
__device__ inline void fill_e2m1_pair_table(uint32_t* table, int threads) {
  for (int i = threadIdx.x; i < 256; i += threads) table[i] = e2m1_pair_bf16(i);
  __syncthreads();
}

}  // namespace fusedmoe::cuda
