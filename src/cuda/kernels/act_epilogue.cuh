// The small-M GEMM1 with the activation in its epilogue (SmallMGemm::act_epilogue; small_m_gemm.cu,
// small_m_gemm_fp4.cu): it writes bf16 h2, the values of GEMM1 followed by the activation kernel,
// without h or the launch. Each value is rounded as GEMM1's epilogue would (tile_value, bf16), then
// passed through the activation kernel's math. For a gated activation a 16-row tile takes, as its
// rows gq and gq + 8, the gate and the up row of h2 column j = n0 / 2 + gq (8 columns a tile, so the
// grid is GEMM1's), so each lane holds a gate/up pair of the same tokens in its accumulators; w13's
// rows are [gate | up] (j and I + j), or interleaved for swiglu_oai (2j and 2j + 1), as activation.cu
// reads them. relu2 keeps GEMM1's rows (h2 is I = N columns).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/activation_math.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/mma_util.cuh"

namespace fusedmoe::cuda {

// The kernels that carry the epilogue: the split-k ones of 8-token tiles (kMaxNT 1: up to 6 rows an
// expert, where the heuristic takes split-k blocks below 16 routed rows and for bf16 weights). The other
// kernels compile without it and stay as they were: with it, some fp4 variants spilled 8-28 bytes more
// (ptxas) and the fp4 warp-tile kernel of 8-token tiles ran 1-2% slower at 16-64 tokens, epilogue on or
// off (qwen3-nvfp4, H200).
template <int kMaxNT, bool kSplitK>
constexpr bool kHasActEpilogue = kMaxNT * 8 == kActEpilogueTileTokens && kSplitK;

// Activation::is_gated on the device (the public header's member is host code).
__device__ __forceinline__ bool gated_kind(ActivationKind kind) { return kind != ActivationKind::relu2; }

// The weight rows of a tile's rows gq and gq + 8 (n0: the tile's first row in GEMM1's row order). Past
// the last h2 column both are N: no row (the kernels load zeros there).
template <bool kActEpilogue>
__device__ inline void tile_weight_rows(const SmallMGemm& g, int64_t n0, int gq, int64_t& wr0, int64_t& wr1) {
  if (!kActEpilogue || !g.act_epilogue || !gated_kind(g.act.kind)) {
    wr0 = n0 + gq, wr1 = n0 + gq + 8;
    return;
  }
  const int64_t I = g.N / 2, j = n0 / 2 + gq;
  const bool interleaved = g.act.kind == ActivationKind::swiglu_oai;
  wr0 = j >= I ? g.N : interleaved ? 2 * j : j;
  wr1 = j >= I ? g.N : interleaved ? 2 * j + 1 : I + j;
}

// h2[(off + m) * I + j] = bf16(act(bf16(gate), bf16(up))) for this lane's tokens m = tb + 8t + 2cq, + 1
// inside the expert's rows (sum[t][0..1]: the gate row, sum[t][2..3]: the up row). Inlined: as a call
// (__noinline__) it took the addresses of g and sum, which gave every small-M kernel a 128-208 byte
// stack frame and made them 5-20% slower at decode on H200 even with the epilogue off.
template <int NT>
__device__ __forceinline__ void store_gated_tile(const float (&sum)[NT][4], float scale, const SmallMGemm& g,
                                                 int64_t e, int64_t n0, int64_t wr0, int64_t wr1, int64_t tb,
                                                 int64_t count, int64_t off) {
  const int lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t I = g.N / 2, j = n0 / 2 + gq;
  if (j >= I) return;
  const float* bias_gate = g.bias ? g.bias + e * g.N + wr0 : nullptr;
  const float* bias_up = g.bias ? g.bias + e * g.N + wr1 : nullptr;
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int64_t m = tb + t * 8 + 2 * cq + p;
      if (m >= count) continue;
      const float gate = __bfloat162float(__float2bfloat16_rn(tile_value(sum[t][p], scale, bias_gate)));
      const float up = __bfloat162float(__float2bfloat16_rn(tile_value(sum[t][2 + p], scale, bias_up)));
      g.y[(off + m) * I + j] = __float2bfloat16_rn(gated_activation(g.act.kind, gate, up, g.act.alpha, g.act.limit));
    }
}

// relu2: h2[(off + m) * N + n] = bf16(relu2(bf16(value))), store_tile's fragments and rows.
struct Relu2OfBf16 {
  __device__ __nv_bfloat16 operator()(float v) const {
    return __float2bfloat16_rn(relu2_activation(__bfloat162float(__float2bfloat16_rn(v))));
  }
};

// A small-M tile's epilogue: store_tile, or GEMM1's with the activation (kernels with kActEpilogue).
template <int NT, bool kActEpilogue>
__device__ inline void store_small_m_tile(const float (&sum)[NT][4], float scale, const SmallMGemm& g, int64_t e,
                                          int64_t n0, int64_t wr0, int64_t wr1, int64_t tb, int64_t count,
                                          int64_t off) {
  if (!kActEpilogue || !g.act_epilogue) store_tile<NT>(sum, scale, g.bias, e, g.N, n0, tb, count, off, g.y);
  else if (gated_kind(g.act.kind)) store_gated_tile<NT>(sum, scale, g, e, n0, wr0, wr1, tb, count, off);
  else store_tile<NT>(sum, scale, g.bias, e, g.N, n0, tb, count, off, g.y, Relu2OfBf16{});
}

}  // namespace fusedmoe::cuda
