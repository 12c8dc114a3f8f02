// Small-M grouped GEMM, the decode path: for each active expert e and its rows r,
//   Y[r, n] = sum_k X[src(r), k] * W[e, n, k] (+ bias[e, n])   (fp8-block: per 128-wide k group, times
//   the activation scale of (row, group) and the weight scale of (n/128, group)).
// Decode is memory-bound: the kernel streams each weight row once per 8*NT rows of an expert
// with 16-byte loads and multiplies on the tensor cores with mma.sync, the weights as the
// 16-row "A" operand and up to 8*NT token rows as "B" (swap-AB). A and B use one permutation
// of k inside each 16-byte load (both sides agree, so the dot product is unchanged), which lets
// every thread load its operands straight from global memory without shared memory.
// Block: 4 warps split k (16-byte chunks w, w+4, ...: side by side in each row; fp8 pairs of
// chunks, one 128-wide scale group, so each group's mma sums are scaled once) and reduce through
// shared memory in a fixed order. Grid: (ceil(N/16), max active experts).
// Variant SmallMGemm::warp_tiles (the heuristic's choice, heuristics.cpp): each warp takes its own
// 16-row tile over all of k — 64 rows per block, no split-k reduce — and the block stages X once in
// shared memory for its four warps (cp.async, two buffers, one barrier per step while the weight
// loads are in flight), the fp4 kernel's shape. H200, session 8: fp8-block 2-18% faster from 16 routed
// rows on (deepseek-v3 16-256 tokens), bf16 5% faster at 16-row tiles (qwen3-30b-a3b 128 tokens),
// within +-2% at 8-row tiles and 2-4% slower at one token.
// Limits: K % 32 (bf16) / K % 128 (fp8). A variant reading 32 contiguous bytes per lane with
// contiguous per-warp k ranges measured 15-35% slower at decode on H200 (bench/results).
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerBlock = 16;

template <bool kFp8, int NT, int U, bool kWarpTiles>
__global__ void __launch_bounds__(kWarps * 32) small_m_gemm_kernel(SmallMGemm g, RowPlan plan) {
  constexpr int kElemBytes = kFp8 ? 1 : 2;
  constexpr int kChunk = 4 * 16 / kElemBytes;  // k values per 16-byte load of each of 4 lanes
  // Chunks a warp takes side by side: fp8 two (one 128-wide scale group: its mma sums are scaled
  // once), bf16 one. Group q covers chunks q*G .. q*G + G-1; warp w takes groups w, w+4, ...
  constexpr int G = kFp8 ? 2 : 1;
  static_assert(U % G == 0, "a round holds whole chunk groups");
  __shared__ float partial[kWarpTiles ? 1 : kWarps][NT][4][32];
  // Warp tiles: slot (u * NT + t) * 32 + lane holds that lane's 16 bytes of chunk u of the step, tile t.
  __shared__ uint4 xs[kWarpTiles ? 2 : 1][kWarpTiles ? U * NT * 32 : 1];
  constexpr int kGroupStride = kWarpTiles ? 1 : kWarps;  // a warp's step between chunk groups

  pdl_wait();
  const int e = plan.active[blockIdx.y];
  if (e < 0) return;
  const int64_t off = plan.offsets[e], count = plan.counts[e];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t N = g.N, K = g.K;
  const int64_t n0 = (int64_t(blockIdx.x) * (kWarpTiles ? kWarps : 1) + (kWarpTiles ? warp : 0)) * kRowsPerBlock;
  const int64_t num_chunks = K / kChunk, num_groups = num_chunks / G, kg_count = K / 128;
  const uint8_t* w = static_cast<const uint8_t*>(g.w) + (e * N) * K * kElemBytes;
  const int64_t wr0 = n0 + gq, wr1 = n0 + gq + 8;
  const uint8_t* w_row0 = w + wr0 * K * kElemBytes + cq * 16;
  const uint8_t* w_row1 = w + wr1 * K * kElemBytes + cq * 16;
  const uint8_t* x = static_cast<const uint8_t*>(g.x);
  const float* w_scale = kFp8 ? g.w_scales + (e * ((N + 127) / 128) + n0 / 128) * kg_count : nullptr;
  // fp8: the activation scale of token m at group kg is sa_base[kg * sa_stride] (row-major when
  // x_row is set, grouped M-major otherwise).
  const int64_t sa_stride = g.x_row ? 1 : count;

  for (int64_t tb = 0; tb < count; tb += NT * 8) {
    // Source row of this lane's B token in each tile, and (fp8) the scales of its two C columns.
    const uint8_t* x_row[NT];
    const float* sa_base[NT][2];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int64_t m = tb + t * 8 + gq;
      const int64_t src = m < count ? (g.x_row ? g.x_row[off + m] : off + m) : -1;
      x_row[t] = src >= 0 ? x + src * K * kElemBytes + cq * 16 : nullptr;
      if constexpr (kFp8) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t mc = tb + t * 8 + 2 * cq + j;
          sa_base[t][j] = mc >= count ? nullptr
                          : g.x_row   ? g.x_scales + int64_t(g.x_row[off + mc]) * kg_count
                                      : g.x_scales + off * kg_count + mc;
        }
      }
    }
    float acc[NT][4];
#pragma unroll
    for (int t = 0; t < NT; ++t)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;

    // Warp tiles: the step's U chunks (consecutive) of X for every tile, copied by the block's
    // threads — thread (w, l) the slots of lane l with (u * NT + t) % 4 == w — zeros out of range.
    auto stage_x = [&](int buf, int64_t q0) {
#pragma unroll
      for (int i = warp; i < U * NT; i += kWarps) {
        const int u = i / NT, t = i % NT;
        const int64_t ch = q0 * G + u;
        const bool valid = x_row[t] != nullptr && ch < num_chunks;
        cp_async_16(&xs[buf][i * 32 + lane], valid ? x_row[t] + ch * 64 : x, valid);
      }
      cp_async_commit();
    };
    int buf = 0;
    if constexpr (kWarpTiles) {
      __syncthreads();  // every warp is done reading xs (previous token tile)
      stage_x(0, 0);
    }
    // Each round: U chunks per warp (U / G groups), all loads first.
    for (int64_t q0 = kWarpTiles ? 0 : warp; q0 < num_groups; q0 += kGroupStride * (U / G), buf ^= 1) {
      uint4 wa[U], wb[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = (q0 + (u / G) * kGroupStride) * G + u % G;
        const bool ok = ch < num_chunks;
        wa[u] = ok && wr0 < N ? load_streaming(w_row0 + ch * 64) : make_uint4(0, 0, 0, 0);
        wb[u] = ok && wr1 < N ? load_streaming(w_row1 + ch * 64) : make_uint4(0, 0, 0, 0);
      }
      if constexpr (kWarpTiles) {  // the weight loads above are in flight across the barrier
        cp_async_wait_all();
        __syncthreads();  // X of this step is in xs[buf]; every warp is done with xs[buf ^ 1]
        if (q0 + U / G < num_groups) stage_x(buf ^ 1, q0 + U / G);
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        uint4 xv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t ch = (q0 + (u / G) * kGroupStride) * G + u % G;
          if constexpr (kWarpTiles)
            xv[u] = xs[buf][(u * NT + t) * 32 + lane];
          else
            xv[u] = (x_row[t] && ch < num_chunks) ? __ldg(reinterpret_cast<const uint4*>(x_row[t] + ch * 64))
                                                  : make_uint4(0, 0, 0, 0);
        }
        if constexpr (kFp8) {
#pragma unroll
          for (int gi = 0; gi < U / G; ++gi) {
            const int64_t kg = q0 + gi * kGroupStride;  // a group is one 128-wide scale group
            if (kg >= num_groups) continue;
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int c = 0; c < G; ++c) mma_chunk<true>(d, wa[gi * G + c], wb[gi * G + c], xv[gi * G + c]);
            const float sw = w_scale[kg];
            // This lane's C columns are tokens 2cq and 2cq+1 of the tile.
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const float sa = sa_base[t][j] ? sa_base[t][j][kg * sa_stride] : 0.0f;
              acc[t][j] += d[j] * sa * sw;
              acc[t][2 + j] += d[2 + j] * sa * sw;
            }
          }
        } else {
#pragma unroll
          for (int u = 0; u < U; ++u) mma_chunk<false>(acc[t], wa[u], wb[u], xv[u]);
        }
      }
    }
    if (tb + NT * 8 >= count) pdl_launch_dependents();  // last pass: the next kernel may launch
    if constexpr (kWarpTiles) {  // each warp writes its own rows
      store_tile<NT>(acc, 1.0f, g.bias, e, N, n0, tb, count, off, g.y);
    } else {  // split-k reduction in warp order, then warp 0 writes bf16 rows
      float sum[NT][4];
      split_k_sum<kWarps, NT>(acc, partial, sum);
      if (warp == 0) store_tile<NT>(sum, 1.0f, g.bias, e, N, n0, tb, count, off, g.y);
    }
  }
}

template <bool kFp8, bool kWarpTiles>
void launch_typed(const SmallMGemm& g, const RowPlan& plan, int max_active, int tile_tokens, cudaStream_t s) {
  const int64_t rows_per_block = kRowsPerBlock * (kWarpTiles ? kWarps : 1);
  const dim3 grid(static_cast<unsigned>((g.N + rows_per_block - 1) / rows_per_block),
                  static_cast<unsigned>(max_active));
  const dim3 block(kWarps * 32);
  switch (tile_tokens) {
    case 8: launch(small_m_gemm_kernel<kFp8, 1, 4, kWarpTiles>, grid, block, s, g, plan); break;
    case 16: launch(small_m_gemm_kernel<kFp8, 2, 4, kWarpTiles>, grid, block, s, g, plan); break;
    case 32: launch(small_m_gemm_kernel<kFp8, 4, 2, kWarpTiles>, grid, block, s, g, plan); break;
    default: FMOE_FAIL("small-M GEMM tile_tokens must be 8, 16 or 32, got ", tile_tokens);
  }
}

}  // namespace

void launch_small_m_gemm(const SmallMGemm& g, const RowPlan& plan, int num_local, int max_active, int tile_tokens,
                         cudaStream_t s) {
  (void)num_local;
  if (max_active == 0) return;
  const bool fp8 = g.weights == SmallMWeights::fp8_block;
  switch (g.weights) {
    case SmallMWeights::fp8_block:
    case SmallMWeights::bf16:
      if (fp8 && g.warp_tiles) launch_typed<true, true>(g, plan, max_active, tile_tokens, s);
      else if (fp8) launch_typed<true, false>(g, plan, max_active, tile_tokens, s);
      else if (g.warp_tiles) launch_typed<false, true>(g, plan, max_active, tile_tokens, s);
      else launch_typed<false, false>(g, plan, max_active, tile_tokens, s);
      break;
    case SmallMWeights::nvfp4:
    case SmallMWeights::mxfp4: launch_small_m_gemm_fp4(g, plan, max_active, tile_tokens, s); break;
  }
}

}  // namespace fusedmoe::cuda
