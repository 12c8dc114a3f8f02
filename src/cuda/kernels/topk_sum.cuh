// The weighted top-k sum of 8 output columns, shared by finalize.cu and the fused decode
// kernel's reduce items so that both add the same values in the same order:
//   acc[i] += w[j] * rows[row_of[j]][c + i] for the slots j in order (f32; row -1 adds nothing,
//   weight_of == null means weight 1).
// The row indices, weights and rows of 8 slots are loaded before any is added, so a lane waits
// for one memory round trip per 8 slots instead of one per slot (the sum order is unchanged).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace fusedmoe::cuda {

// A 16-byte load through L2 (ld.global.cg): for data written earlier in the same kernel.
__device__ inline uint4 load_l2(const void* p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

template <bool kThroughL2>
__device__ inline void add_weighted_rows8(const int32_t* row_of, const float* weight_of, int top_k,
                                          const __nv_bfloat16* rows, int64_t K, int64_t c, float (&acc)[8]) {
  for (int j0 = 0; j0 < top_k; j0 += 8) {
    int32_t r[8];
    float w[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const bool slot = j0 + u < top_k;
      r[u] = slot ? row_of[j0 + u] : -1;
      w[u] = slot && weight_of ? weight_of[j0 + u] : 1.0f;
    }
    uint4 raw[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      raw[u] = make_uint4(0, 0, 0, 0);
      if (r[u] >= 0) {
        const __nv_bfloat16* p = rows + int64_t(r[u]) * K + c;
        raw[u] = kThroughL2 ? load_l2(p) : *reinterpret_cast<const uint4*>(p);
      }
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      if (r[u] < 0) continue;
      const __nv_bfloat16* v = reinterpret_cast<const __nv_bfloat16*>(&raw[u]);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] += w[u] * __bfloat162float(v[i]);
    }
  }
}

// out[0..7] = bf16(acc[0..7]) in one 16-byte store.
__device__ inline void store_bf16x8(const float (&acc)[8], __nv_bfloat16* out) {
  __align__(16) __nv_bfloat16 o[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = __float2bfloat16_rn(acc[i]);
  *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(o);
}

}  // namespace fusedmoe::cuda
