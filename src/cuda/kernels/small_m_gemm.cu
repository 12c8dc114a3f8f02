// Small-M grouped GEMM, the decode path: for each active expert e and its rows r,
//   Y[r, n] = sum_k X[src(r), k] * W[e, n, k] (+ bias[e, n])   (fp8-block: per 128-wide k group, times
//   the activation scale of (row, group) and the weight scale of (n/128, group)).
// Decode is memory-bound: the kernel streams each weight row once per pass over up to 8*NT rows
// of an expert with 16-byte loads and multiplies on the tensor cores with mma.sync, the weights
// as the 16-row "A" operand and the pass's token rows as "B" (swap-AB). Each pass takes the
// smallest tile (NT = 1, 2, 4) that holds the expert's remaining rows, up to the launch's
// tile_tokens: one pass for an expert with 9-32 rows where a fixed 8-row tile re-read its weights
// up to 4 times (deepseek-v3 fp8 at 128 tokens: -27%, H200, session 8). A and B use one permutation
// of k inside each 16-byte load (both sides agree, so the dot product is unchanged), which lets
// every thread load its operands straight from global memory without shared memory.
// Block: 4 warps split k (16-byte chunks w, w+4, ...: side by side in each row; fp8 pairs of
// chunks, one 128-wide scale group, so each group's mma sums are scaled once) and reduce through
// shared memory in a fixed order. Grid: (ceil(N/16), the plan's most work items): a block row per
// item of the row plan (RowPlan::items), one tile of up to tile_tokens rows of one expert, so the
// rows of an expert that draws many tokens run side by side in several blocks.
// Variant SmallMGemm::warp_tiles (the heuristic's choice, heuristics.cpp): each warp takes its own
// 16-row tile over all of k — 64 rows per block, no split-k reduce — and the block stages X once in
// shared memory for its four warps (cp.async, two buffers, one barrier per step while the weight
// loads are in flight), the fp4 kernel's shape. H200, session 8: fp8-block 2-18% faster from 16 routed
// rows on (deepseek-v3 16-256 tokens), bf16 5% faster at 16-row tiles (qwen3-30b-a3b 128 tokens),
// within +-2% at 8-row tiles and 2-4% slower at one token.
// Limits: K % 32 (bf16) / K % 128 (fp8). A variant reading 32 contiguous bytes per lane with
// contiguous per-warp k ranges measured 15-35% slower at decode on H200 (bench/results); so did asking L2 for the
// weights of the round one or two ahead (prefetch.global.L2, a lane per 64-byte piece; session 46, same-run A/B:
// 0.88-0.95x at 1-8 tokens on deepseek-v3, qwen3-30b-a3b and its fp8 form, mixtral-8x7b-fp8).
#include "cuda/cuda_util.h"
#include "cuda/kernels/act_epilogue.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerBlock = 16;

// What a block knows about its expert and its 16 (split-k) or 64 (warp tiles) weight rows.
struct BlockTile {
  int64_t e, off, count, N, K, n0, num_chunks, num_groups, kg_count, sa_stride, wr0, wr1;
  int warp, lane, gq, cq;
  const uint8_t* w_row0;
  const uint8_t* w_row1;
  const uint8_t* x;
  const float* w_scale;
};

// fp8-channel (g.w_row_scales set): the lane's C sums times the scales of their weight rows n0 + gq and
// n0 + gq + 8, before the epilogue adds the bias (the product rounded once, as tile_value's scale would).
template <int NT>
__device__ inline void scale_rows(float (&sum)[NT][4], const SmallMGemm& g, int64_t e, int64_t n0) {
  if (!g.w_row_scales) return;
  const int64_t n = n0 + ((threadIdx.x & 31) >> 2);
  const float* rs = g.w_row_scales + e * g.N;
  const float lo = n < g.N ? rs[n] : 0.0f, hi = n + 8 < g.N ? rs[n + 8] : 0.0f;
#pragma unroll
  for (int t = 0; t < NT; ++t) sum[t][0] *= lo, sum[t][1] *= lo, sum[t][2] *= hi, sum[t][3] *= hi;
}

// One pass over all of k for the expert's rows tb .. tb + 8*NT - 1 (U chunks per warp in flight),
// then the epilogue. partial_raw: kWarps*NT*4*32 floats (split-k); xs_raw: 2*U*NT*32 uint4 (warp tiles).
template <bool kFp8, int NT, int U, bool kWarpTiles, bool kActEpilogue>
__device__ __forceinline__ void gemm_pass(const SmallMGemm& g, const BlockTile& b, int64_t tb, float* partial_raw,
                                          uint4* xs_raw) {
  constexpr int kElemBytes = kFp8 ? 1 : 2;
  // Chunks a warp takes side by side: fp8 two (one 128-wide scale group: its mma sums are scaled
  // once), bf16 one. Group q covers chunks q*G .. q*G + G-1; warp w takes groups w, w+4, ...
  constexpr int G = kFp8 ? 2 : 1;
  static_assert(U % G == 0, "a round holds whole chunk groups");
  constexpr int kGroupStride = kWarpTiles ? 1 : kWarps;  // a warp's step between chunk groups
  // Warp tiles: slot (u * NT + t) * 32 + lane of a buffer holds that lane's 16 bytes of chunk u of
  // the step, tile t.
  uint4 (*xs)[U * NT * 32] = reinterpret_cast<uint4 (*)[U * NT * 32]>(xs_raw);
  const int64_t count = b.count, off = b.off, num_chunks = b.num_chunks, num_groups = b.num_groups;
  const int warp = b.warp, lane = b.lane, gq = b.gq, cq = b.cq;

  // Source row of this lane's B token in each tile, and (fp8) the scales of its two C columns.
  const uint8_t* x_row[NT];
  const float* sa_base[NT][2];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t m = tb + t * 8 + gq;
    const int64_t src = m < count ? (g.x_row ? g.x_row[off + m] : off + m) : -1;
    x_row[t] = src >= 0 ? b.x + src * b.K * kElemBytes + cq * 16 : nullptr;
    if constexpr (kFp8) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t mc = tb + t * 8 + 2 * cq + j;
        sa_base[t][j] = mc >= count ? nullptr
                        : g.x_row   ? g.x_scales + int64_t(g.x_row[off + mc]) * b.kg_count
                                    : g.x_scales + off * b.kg_count + mc;
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
      cp_async_16(&xs[buf][i * 32 + lane], valid ? x_row[t] + ch * 64 : b.x, valid);
    }
    cp_async_commit();
  };
  int buf = 0;
  if constexpr (kWarpTiles) {
    __syncthreads();  // every warp is done reading xs (previous pass)
    stage_x(0, 0);
  }
  // Each round: U chunks per warp (U / G groups), all loads first.
  for (int64_t q0 = kWarpTiles ? 0 : warp; q0 < num_groups; q0 += kGroupStride * (U / G), buf ^= 1) {
    uint4 wa[U], wb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t ch = (q0 + (u / G) * kGroupStride) * G + u % G;
      const bool ok = ch < num_chunks;
      wa[u] = ok && b.wr0 < b.N ? load_streaming(b.w_row0 + ch * 64) : make_uint4(0, 0, 0, 0);
      wb[u] = ok && b.wr1 < b.N ? load_streaming(b.w_row1 + ch * 64) : make_uint4(0, 0, 0, 0);
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
          const float sw = b.w_scale[kg];
          // This lane's C columns are tokens 2cq and 2cq+1 of the tile.
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const float sa = sa_base[t][j] ? sa_base[t][j][kg * b.sa_stride] : 0.0f;
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
  pdl_launch_dependents();  // the block's only pass is done: the next kernel may launch
  if constexpr (kWarpTiles) {  // each warp writes its own rows
    if constexpr (kFp8) scale_rows<NT>(acc, g, b.e, b.n0);
    store_small_m_tile<NT, kActEpilogue>(acc, 1.0f, g, b.e, b.n0, b.wr0, b.wr1, tb, count, off);
  } else {  // split-k reduction in warp order, then warp 0 writes bf16 rows
    float sum[NT][4];
    split_k_sum<kWarps, NT>(acc, *reinterpret_cast<float (*)[kWarps][NT][4][32]>(partial_raw), sum);
    if (warp == 0) {
      if constexpr (kFp8) scale_rows<NT>(sum, g, b.e, b.n0);
      store_small_m_tile<NT, kActEpilogue>(sum, 1.0f, g, b.e, b.n0, b.wr0, b.wr1, tb, count, off);
    }
  }
}

// Chunks in flight per warp (U) of each token tile of NT * 8 rows.
template <int NT>
constexpr int kU = NT == 4 ? 2 : 4;

// kMaxNT: the largest token tile (8 * kMaxNT rows). Each pass takes the smallest tile that holds
// the expert's remaining rows, so an expert's weights are read once per 8 * kMaxNT of its rows,
// and one with few rows does no mma work for empty columns. k is summed in the same order
// whatever the tile (per column, by chunk group), so the choice does not change any bit.
// Blocks per SM the registers must allow for the variants the heuristic uses: with one pass per
// block ptxas took more registers (fp8 32-row warp tiles 188, 2 blocks per SM: deepseek-v3 7% slower
// at 128-256 tokens; bf16 8-row split-k 86, 5 blocks: qwen3-30b-a3b's 768 one-token blocks in two
// waves). These keep the occupancy of the multi-pass kernel (H200, bench/results, session 10).
template <bool kFp8, int kMaxNT, bool kWarpTiles>
constexpr int kMinBlocks = kWarpTiles ? (kFp8 && kMaxNT == 4 ? 4 : 1)
                           : kFp8     ? (kMaxNT == 1 ? 4 : kMaxNT == 2 ? 3 : 1)
                                      : (kMaxNT == 1 ? 8 : 1);

template <bool kFp8, int kMaxNT, bool kWarpTiles>
__global__ void __launch_bounds__(kWarps * 32, (kMinBlocks<kFp8, kMaxNT, kWarpTiles>))
    small_m_gemm_kernel(SmallMGemm g, RowPlan plan) {
  constexpr int kElemBytes = kFp8 ? 1 : 2;
  constexpr int kChunk = 4 * 16 / kElemBytes;  // k values per 16-byte load of each of 4 lanes
  constexpr int kMaxSlots = kMaxNT * kU<kMaxNT> * 32;  // NT * U * 32, largest at the largest tile
  __shared__ float partial[kWarpTiles ? 1 : kWarps * kMaxNT * 4 * 32];
  __shared__ uint4 xs[kWarpTiles ? 2 * kMaxSlots : 1];

  pdl_wait();
  const PlanItem item = plan.items[blockIdx.y];  // a block row per item; expert -1 past the last
  if (item.expert < 0) return;
  const int e = item.expert;
  BlockTile b;
  b.e = e;
  b.off = item.offset;
  b.count = item.count;
  b.warp = threadIdx.x >> 5, b.lane = threadIdx.x & 31, b.gq = b.lane >> 2, b.cq = b.lane & 3;
  b.N = g.N, b.K = g.K;
  b.n0 = (int64_t(blockIdx.x) * (kWarpTiles ? kWarps : 1) + (kWarpTiles ? b.warp : 0)) * kRowsPerBlock;
  b.num_chunks = b.K / kChunk, b.num_groups = b.num_chunks / (kFp8 ? 2 : 1), b.kg_count = b.K / 128;
  const uint8_t* w = static_cast<const uint8_t*>(g.w) + (e * b.N) * b.K * kElemBytes;
  constexpr bool kAct = kHasActEpilogue<kMaxNT, !kWarpTiles>;
  tile_weight_rows<kAct>(g, b.n0, b.gq, b.wr0, b.wr1);  // with a gated epilogue: a gate row and its up row
  b.w_row0 = w + b.wr0 * b.K * kElemBytes + b.cq * 16;
  b.w_row1 = w + b.wr1 * b.K * kElemBytes + b.cq * 16;
  b.x = static_cast<const uint8_t*>(g.x);
  b.w_scale = kFp8 ? g.w_scales + (e * ((b.N + 127) / 128) + b.n0 / 128) * b.kg_count : nullptr;
  // fp8: the activation scale of token m at group kg is sa_base[kg * sa_stride] (row-major when
  // x_row is set, grouped M-major otherwise).
  b.sa_stride = g.x_row ? 1 : b.count;

  const int64_t end = min(b.count, int64_t(item.first) + plan.item_rows);
  fitted_pass<kMaxNT>(item.first, end, [&](auto nt, int64_t tb) {
    gemm_pass<kFp8, decltype(nt)::value, kU<decltype(nt)::value>, kWarpTiles, kAct>(g, b, tb, partial, xs);
  });
}

// Launched as an ordinary dependent: it starts once the previous kernel has completed (pdl_wait() is then a
// no-op; its own pdl_launch_dependents() still lets the next kernel start early). As a programmatic dependent it
// ran up to 1.36x slower at some decode points, same-run A/B on H200 (session 27, 2 rounds): mixtral-8x7b 1 and
// 16 tokens 1.16-1.18x, mixtral-8x7b-fp8 16 tokens 1.36x (GEMM2 245 -> 127 us), qwen3-30b-a3b 1 token 1.28x
// faster without, the other points 0.996-1.02x. Its own time is the same either way under ncu (which serializes
// launches); why the early launch slows it is open. FUSEDMOE_PDL_GEMM=1 launches it programmatically again.
template <bool kFp8, bool kWarpTiles>
void launch_typed(const SmallMGemm& g, const RowPlan& plan, int64_t max_items, int tile_tokens, cudaStream_t s) {
  const int64_t rows_per_block = kRowsPerBlock * (kWarpTiles ? kWarps : 1);
  const dim3 grid(static_cast<unsigned>((g.N + rows_per_block - 1) / rows_per_block),
                  static_cast<unsigned>(max_items));
  const dim3 block(kWarps * 32);
  FMOE_CHECK(plan.items && plan.item_rows == tile_tokens, "the small-M GEMM of ", tile_tokens,
             "-row tiles needs a plan with work items of as many rows, got item_rows=", plan.item_rows);
  const bool pdl = pdl_gemm_enabled();
  switch (tile_tokens) {
    case 8: launch_ex(small_m_gemm_kernel<kFp8, 1, kWarpTiles>, grid, block, 0, pdl, s, 1u, g, plan); break;
    case 16: launch_ex(small_m_gemm_kernel<kFp8, 2, kWarpTiles>, grid, block, 0, pdl, s, 1u, g, plan); break;
    case 32: launch_ex(small_m_gemm_kernel<kFp8, 4, kWarpTiles>, grid, block, 0, pdl, s, 1u, g, plan); break;
    default: FMOE_FAIL("small-M GEMM tile_tokens must be 8, 16 or 32, got ", tile_tokens);
  }
}

}  // namespace

void launch_small_m_gemm(const SmallMGemm& g, const RowPlan& plan, int tile_tokens, cudaStream_t s,
                         Fp4DecodeOverlap overlap) {
  const int64_t max_items = plan.item_grid;
  if (max_items == 0) return;
  const bool fp8 = g.weights == SmallMWeights::fp8_block;
  FMOE_CHECK(!(fp8 && g.act_epilogue), "the small-M GEMM has no activation epilogue for fp8 (the activation "
             "re-quantizes)");
  const bool fp4 = g.weights == SmallMWeights::nvfp4 || g.weights == SmallMWeights::mxfp4;
  FMOE_CHECK(!g.act_epilogue || (tile_tokens == kActEpilogueTileTokens && !g.warp_tiles) ||
                 (fp4 && tile_tokens == kFp4WgmmaTileTokens),
             "the small-M GEMM has its activation epilogue in the split-k kernels of ", kActEpilogueTileTokens,
             "-token tiles and (fp4) the wgmma kernel of ", kFp4WgmmaTileTokens, "-token items alone, got tile_tokens=",
             tile_tokens, g.warp_tiles ? " with warp tiles" : "");
  FMOE_CHECK(!g.act_epilogue || !g.act.is_gated() || g.N % 2 == 0, "the gated small-M GEMM1 needs an even N, got N=",
             g.N);
  switch (g.weights) {
    case SmallMWeights::fp8_block:
    case SmallMWeights::bf16:
      if (fp8 && g.warp_tiles) launch_typed<true, true>(g, plan, max_items, tile_tokens, s);
      else if (fp8) launch_typed<true, false>(g, plan, max_items, tile_tokens, s);
      else if (g.warp_tiles) launch_typed<false, true>(g, plan, max_items, tile_tokens, s);
      else launch_typed<false, false>(g, plan, max_items, tile_tokens, s);
      break;
    case SmallMWeights::nvfp4:
    case SmallMWeights::mxfp4: launch_small_m_gemm_fp4(g, plan, tile_tokens, s, overlap); break;
  }
}

}  // namespace fusedmoe::cuda
