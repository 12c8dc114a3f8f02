// Small-M grouped GEMM for fp4 weights (W4A16), the decode path of the nvfp4 and mxfp4 experts:
//   Y[r, n] = gs[e] * sum_k X[src(r), k] * e2m1(W[e, n, k]) * s[e, n, k / G]  (+ bias[e, n])
// G = 16 with e4m3 s and an f32 global scale gs (nvfp4), G = 32 with ue8m0 s and gs = 1 (mxfp4);
// X bf16, f32 accumulation, bf16 out.
// The shape is small_m_gemm.cu's (swap-AB mma.sync m16n8k16 with 16 weight rows per block, 4
// warps splitting k, a fixed-order reduction through shared memory), but one 16-byte load of a
// lane holds 32 packed values of a weight row (in the sm90 packing, fp4_util.cuh). They are dequantized in
// registers — two instructions a pair of values on average (no table) and one bf16x2 multiply by the group scale
// with fp4_util's 2^126 folded in (nvfp4: s 2^118, the other 2^8 in the f32 global scale) — exact,
// since e2m1 has 2 significant bits, e4m3 4 and ue8m0 1 — and meet 64 bytes of X in 8 k16 steps.
// Each packed weight is read once per pass over up to 8*NT rows of its expert; each pass takes the
// smallest tile that holds the expert's remaining rows (up to the launch's tile). A block row per
// work item of the row plan (RowPlan::items: one tile of rows of one expert), as small_m_gemm.cu.
// Variant SmallMGemm::warp_tiles (the heuristic's choice from 16 routed rows on): each warp takes
// its own 16-row tile over all of k — no split-k reduce; 10-30% faster at 16-1024 tokens than the
// split-k blocks. Its warps need the same X, which the block stages once in shared memory (cp.async,
// two buffers of U chunks, one barrier per step while the weight loads are in flight) instead of
// each warp reading it through L1: 5-12% faster at 16-1024 tokens (session 7). 8-row tiles run in
// blocks of 4 warps (64 weight rows); 16-, 32- and 64-row tiles, where X's reads from L2 bound the
// kernel, in blocks of 8, 8 and 16 (128, 128 and 256 rows) that stage X in whole 32-byte sectors
// (sessions 13 and 77). The warp tiles address a round's loads as the split-k blocks do (32-bit chunk counts, one
// predicate a chunk, no zero-fills, rows past N clamped; session 89: 616 instead of 764 instructions a round in the
// 8-row nvfp4 tiles, bit-equal; gpt-oss-120b 1.01-1.06x at 4-256 tokens, qwen3-nvfp4 1.03x at 128 and 0.99-1.00x at
// 16-64, where GEMM1 already reads at 79% of the DRAM peak; H100).
// Measured (H200, bench/results): ncu showed the small tiles issue-bound (4 warps per scheduler, an
// instruction every ~5 cycles each). A 256-entry table in shared memory (byte -> two bf16) gave way
// to bit placement (session 7, 10-22% faster at 16-128 tokens), then to the word-wide form here.
// Split-k blocks (below 16 routed rows): 6 chunks of loads per lane, each chunk's X loaded ahead of its
// dequantization, which runs a k16 step at a time, interleaved with the mma (session 23: gpt-oss-120b 1.05-1.12x
// at 1-3 tokens, bit-equal); loads without zero-fills or per-row predicates (session 79: 188 -> 144 instructions a
// chunk, gpt-oss-120b 1.01-1.03x at 1-3 tokens, H100; fp4_split_k_pass). mxfp4 chunks whose warp has no scale
// above 2 (all of them in checkpoints) run a copy of that code without the second multiply, which as predicated-off
// instructions still took 32 issue slots a chunk (gpt-oss-120b 1.01-1.03x at 1-3 tokens, H100, session 78). At 1
// token GEMM2's blocks start in GEMM1's tail (Fp4DecodeOverlap, kernels.h: their item and first weight loads before
// their pdl_wait). At 1-2 tokens on rows of more than 2048 values the split-k blocks have 8 warps (3 chunks a warp,
// 3 blocks an SM; SmallMGemm::split_k_warps, the heuristic's): half a block's work, a shorter tail to the few waves a
// decode GEMM makes (gpt-oss-120b 1.072x / 1.059x at 1 / 2 tokens, H100, session 79). Measured and dropped (session
// 79, bench/results/patches): persistent split-k blocks streaming their tiles' loads a round ahead (0.70-0.90x),
// weights through shared memory at 6 or 8 blocks an SM (0.89-1.02x); warp tiles holding the next round's loads in
// registers, as a ring (session 82, 0.80-0.87x) or a whole round ahead at 4 blocks an SM (session 88, H200, 0.82-0.95x
// at 16-128 tokens: the fewer warps no longer hide the math's issue work). The 4-warp split-k blocks of rows of up to
// 8 or 16 chunks hold 2 or 4 chunks a warp at 8 or 6 blocks an SM (SmallMGemm::split_k_fit, kBlocksPerSm; session 84).
// Limits: K % 32 == 0 (one lane's 32 values; the 4 lanes of a row take 128, the last chunk of a
// row may be partial); tiles of 8, 16 or 32 rows, and 64 with warp tiles.
#include <type_traits>

#include "cuda/cuda_util.h"
#include "cuda/kernels/fp4_util.cuh"
#include "cuda/kernels/act_epilogue.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"
#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerBlock = 16;
// A 128-value chunk of a row is 4 segments: in the sm90 packing's 16-row tiles, a lane's segment of the next chunk
// lies 4 segment columns (4 x 256 bytes) further on.
constexpr int kChunkBytes = 4 * 16 * kFp4TileRows;

// The multipliers of one lane's 32 packed values of a row (16 bytes, its share of a 128-value chunk), for
// e2m1x8_sm90_bf16_times_2m126's output: lo for pairs 0-7, hi for 8-15 (nvfp4: its two e4m3 group scales,
// times 2^118 — the f32 global scale carries the other 2^8 —; mxfp4: the one ue8m0 scale, see
// ue8m0_multiplier). big: an mxfp4 scale above 2 (not seen in checkpoints), whose lo and hi are 2^126 and
// which takes a second multiply by big_multiplier. scale_bits: nvfp4 two bytes, mxfp4 one.
struct Fp4Multipliers {
  __nv_bfloat162 lo, hi;
};
template <bool kNv>
__device__ inline Fp4Multipliers fp4_multipliers(uint32_t scale_bits, bool& big) {
  big = false;
  if constexpr (kNv) {
    const float2 f = nv_multipliers_f32(scale_bits);
    return {__float2bfloat162_rn(f.x), __float2bfloat162_rn(f.y)};
  }
  const __nv_bfloat162 m = ue8m0_multiplier(scale_bits & 0xff, big);
  return {m, m};
}
// The second multiply of a lane whose warp has a big mxfp4 scale: 2^(u-127) where the lane's is big, else 1.
__device__ inline __nv_bfloat162 big_multiplier(uint32_t scale_bits, bool big) {
  return big ? __float2bfloat162_rn(ue8m0_to_float(static_cast<uint8_t>(scale_bits))) : __float2bfloat162_rn(1.0f);
}

// 16 packed bytes (32 values) -> 16 bf16x2 words, word j = the checkpoint's values 2j, 2j+1, scaled (see
// Fp4Multipliers). Called by whole warps (the mxfp4 branch on big scales is voted). The warp tiles' form: all 16
// words, then the mma in the checkpoint's k order (the split-k blocks' per-word form was 1-1.5% slower there at 16-64
// tokens, H200, session 23).
template <bool kNv>
__device__ inline void dequant32(const uint4& w, uint32_t scale_bits, uint32_t (&out)[16]) {
  bool big;
  const Fp4Multipliers m = fp4_multipliers<kNv>(scale_bits, big);
#pragma unroll
  for (int c = 0; c < 4; ++c) {  // word c holds pairs c + 4q, q = 0..3
    uint32_t p[4];
    e2m1x8_sm90_bf16_times_2m126(word(w, c), p);
#pragma unroll
    for (int q = 0; q < 4; ++q) out[c + 4 * q] = mul_bf16x2(p[q], q < 2 ? m.lo : m.hi);
  }
  if (!kNv && __any_sync(0xffffffffu, big)) {
    const __nv_bfloat162 sc = big_multiplier(scale_bits, big);
#pragma unroll
    for (int j = 0; j < 16; ++j) out[j] = mul_bf16x2(out[j], sc);
  }
}

// kSplitK: the block's 4 warps split k over one 16-row tile and reduce through shared memory;
// otherwise each warp takes its own 16-row tile over the whole of k (64, 128 or 256 rows per block, no
// reduction), so a block streams 4x, 8x or 16x the bytes per block.
// Blocks of 4 warps per SM the registers are sized for: 5 (96 registers) for warp tiles of 8 or 16
// tokens, 5% faster at 16-128 tokens than 4 (128 registers) despite a few spills; 4 for the split-k
// blocks (1 token: 10% slower with 5) and 32-token tiles (3% slower with 5). H200, session 7. Blocks of
// 8 or 16 warps: a half or a quarter as many, rounded down (16-token tiles: 2 blocks of 8 warps), 128 registers;
// but split-k blocks of 8 warps 3 (80 registers: kFp4SplitU below). nvfp4's 8-row warp tiles: 6 (80 registers; ptxas
// had chosen 80 under the bound of 5, and one register more would have cost a block an SM).
template <bool kNv, int NT, bool kSplitK>
constexpr int kMinBlocks = kNv && !kSplitK && NT == 1 ? 6 : !kSplitK && NT <= 2 ? 5 : 4;
// Split-k blocks of 4 warps fitted to short rows (kSplitU: 2 or 4 chunks a warp in flight, SmallMGemm::split_k_fit):
// 8 or 6 blocks an SM (64 or 80 registers, 40-76 bytes of spills). qwen3-nvfp4's 1-token GEMMs (K = 2048 and 768: 16
// and 6 chunks a row) then run 768 and 1024 blocks as about one wave each (4 an SM: 1.5 and 1.9 waves), and more of
// GEMM2's blocks start in GEMM1's tail: 1.051x (modular) / 1.056x (monolithic) end to end, bit-equal; 4-chunk blocks at
// 5 an SM (96 registers, no spills) gave 1.024x / 1.020x (H100, session 84, same-run A/B, 4 rounds).
template <bool kNv, int NT, bool kSplitK, int kBlockWarps, int kSplitU = 0>
constexpr int kBlocksPerSm = kSplitU == 2 ? 8
                             : kSplitU == 4 ? 6
                             : kSplitK && kBlockWarps == 8 ? 3
                                                           : kMinBlocks<kNv, NT, kSplitK> * kWarps / kBlockWarps;

// What a block knows about its expert and its 16 (split-k) or 64 / 128 / 256 (warp tiles) weight rows.
struct Fp4BlockTile {
  int64_t e, off, count, N, K, n0, slices, num_chunks, wr0, wr1;
  int warp, lane, gq, cq;
  bool wait_in_pass;   // split-k on a settled plan: pdl_wait once the first chunks' weight loads are issued
  bool early_trigger;  // split-k: pdl_launch_dependents right after the wait (else after the pass)
  const uint8_t* w_row0;
  const uint8_t* w_row1;
  const uint8_t* s_row0;
  const uint8_t* s_row1;
  const bf16* x;
  float gs;
};

// Split-k blocks: one pass over all of k for the expert's rows tb .. tb + 8*NT - 1. Warp w of kSplitWarps (4, or 8 for
// 8-token tiles) takes chunks w, w + kSplitWarps, ... of the block's 16 weight rows, U at a time: all U chunks' weight
// loads first, then a chunk at a time its X, its dequantization and mma. Warp 0 sums the warps' fragments (split_k_sum,
// partial_raw: kSplitWarps*NT*4*32 floats) and stores the tile. The loads carry no zero-fill and no per-row
// predicate (session 79: the predicates of 12 loads overflowed the predicate registers, and with the zero-fills and
// X's 64-bit addressing they made the main loop's 6 chunks 1131 instructions, now 867):
// - rows past N (none with fp4 weights, whose N is a multiple of 32, but kept safe) are read at row N - 1 (the
//   kernel's clamp): their sums are never stored;
// - tokens past the expert's count read the tile's first token: their columns are never stored;
// - a lane whose 32 values lie past the end of a row (the last chunk when K % 128 != 0) skips its weight load and
//   gets zero multipliers (a zero scale, or for mxfp4 a zeroed multiplier: ue8m0 0 is 2^-127), and reads X at the
//   row's last 32 values: its products are exact zeros (the dequantized fp4 is always finite, X is finite where the
//   token's own sums are).
// Each k16 step takes pairs 4q + 2h and 4q + 2h + 1 of the lanes' 32 values, so that X's two words of a step are
// adjacent registers of one 16-byte load (the mma's operands need no moves).
template <bool kNv, int NT, int U, int kSplitWarps, bool kActEpilogue>
__device__ __forceinline__ void fp4_split_k_pass(const SmallMGemm& g, const Fp4BlockTile& b, int64_t tb,
                                                 float* partial_raw) {
  constexpr int kScaleBytes = kNv ? 8 : 4;  // a row's scale bytes in a 128-value chunk
  const int warp = b.warp, cq = b.cq;
  const int num_chunks = static_cast<int>(b.num_chunks);
  const int lane_chunks = static_cast<int>((b.slices - cq + 3) / 4);  // chunks holding this lane's 32 values
  const int x_last = static_cast<int>(b.K) - 32;
  auto scale_bits = [&](const uint8_t* p) -> uint32_t {
    return kNv ? *reinterpret_cast<const uint16_t*>(p) : uint32_t(*p);
  };
  const bf16* x_row[NT];  // this lane's B token (row gq of each tile), or the tile's first token past the count
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t m = tb + t * 8 + b.gq, r = m < b.count ? m : tb;
    x_row[t] = b.x + (g.x_row ? g.x_row[b.off + r] : b.off + r) * b.K;
  }
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;

  bool waiting = b.wait_in_pass;
  for (int ch0 = warp; ch0 < num_chunks; ch0 += kSplitWarps * U) {
    uint4 wa[U], wb[U];
    uint32_t sa[U], sb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int ch = ch0 + u * kSplitWarps;
      const bool ok = ch < lane_chunks;
      wa[u] = load_streaming_if(b.w_row0 + ch * kChunkBytes, ok);
      wb[u] = load_streaming_if(b.w_row1 + ch * kChunkBytes, ok);
      sa[u] = ok ? scale_bits(b.s_row0 + ch * kScaleBytes) : 0;
      sb[u] = ok ? scale_bits(b.s_row1 + ch * kScaleBytes) : 0;
    }
    if (waiting) {  // the weights stream in while the previous grid finishes; X is its output
      waiting = false;
      pdl_wait();
      if (b.early_trigger) pdl_launch_dependents();
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int ch = ch0 + u * kSplitWarps;
      if (ch >= num_chunks) break;  // the same for the whole warp
      // This chunk's X first, by volatile loads that stay ahead of the dequantization, which hides their L1/L2
      // latency. As __ldg the compiler put them after it, just before the mma that waited on them: 1.07-1.08x at
      // gpt-oss-120b's 1-3 tokens (H200, session 23; bit-equal).
      const int xo = min(ch * 128 + cq * 32, x_last);
      uint4 xk[NT][4];
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j) xk[t][j] = load_cached(x_row[t] + xo + j * 8);
      bool big_a, big_b;
      Fp4Multipliers ma = fp4_multipliers<kNv>(sa[u], big_a), mb = fp4_multipliers<kNv>(sb[u], big_b);
      if (!kNv && ch >= lane_chunks) ma.lo = ma.hi = mb.lo = mb.hi = __float2bfloat162_rn(0.0f);
      const bool any_big = !kNv && __any_sync(0xffffffffu, big_a || big_b);  // the same for the whole warp
      // The chunk's steps, with the big scales' second multiply (kBig) or without: two copies of the code, so that
      // the common one carries no predicated-off multiplies (32 a chunk, issued all the same).
      const auto steps = [&](auto big) {
        constexpr bool kBig = decltype(big)::value;
        __nv_bfloat162 sca{}, scb{};
        if constexpr (kBig) sca = big_multiplier(sa[u], big_a), scb = big_multiplier(sb[u], big_b);
        const auto pair = [&](uint32_t w, __nv_bfloat162 m, __nv_bfloat162 sc, auto q) {
          const uint32_t v = mul_bf16x2(e2m1x2_sm90_bf16_times_2m126<decltype(q)::value>(w), m);
          return kBig ? mul_bf16x2(v, sc) : v;
        };
        const auto step = [&](auto q, int h) {  // pairs 4q + 2h, 4q + 2h + 1: words 2h, 2h + 1 of X's load q
          constexpr int kQ = decltype(q)::value;
          const __nv_bfloat162 la = kQ < 2 ? ma.lo : ma.hi, lb = kQ < 2 ? mb.lo : mb.hi;
          const uint32_t a0 = pair(word(wa[u], 2 * h), la, sca, q), a1 = pair(word(wa[u], 2 * h + 1), la, sca, q);
          const uint32_t b0 = pair(word(wb[u], 2 * h), lb, scb, q), b1 = pair(word(wb[u], 2 * h + 1), lb, scb, q);
#pragma unroll
          for (int t = 0; t < NT; ++t)
            mma_bf16_16816(acc[t], a0, b0, a1, b1, word(xk[t][kQ], 2 * h), word(xk[t][kQ], 2 * h + 1));
        };
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          step(std::integral_constant<int, 0>{}, h);
          step(std::integral_constant<int, 1>{}, h);
          step(std::integral_constant<int, 2>{}, h);
          step(std::integral_constant<int, 3>{}, h);
        }
      };
      if (any_big)
        steps(std::true_type{});
      else
        steps(std::false_type{});
    }
  }
  if (!b.early_trigger) pdl_launch_dependents();  // the block's only pass is done: the next kernel may launch
  float sum[NT][4];
  split_k_sum<kSplitWarps, NT>(acc, *reinterpret_cast<float (*)[kSplitWarps][NT][4][32]>(partial_raw), sum);
  if (warp == 0) store_small_m_tile<NT, kActEpilogue>(sum, b.gs, g, b.e, b.n0, b.wr0, b.wr1, tb, b.count, b.off);
}

// Warp tiles: one pass over all of k for the expert's rows tb .. tb + 8*NT - 1 (U chunks per lane in flight), then
// the epilogue; xs_raw: 2*U*NT*4*32 uint4 (kBlockWarps = 4, 8 or 16 warps of 16 rows each).
// A round's loads are addressed as the split-k blocks' are (session 79), in 32 bits and with one predicate a chunk
// (session 89):
// - rows past N are read at row N - 1 (the kernel's clamp): their sums are never stored;
// - X of tokens past the expert's count is zero-filled, not read (copies of the tile's first token in their place
//   cost 1.3-1.9x at 4-128 tokens: 7 of an 8-row tile's token rows are empty at decode, and reading them added 60% to
//   the L2 traffic and stalled the warps on the copies; session 89, H100);
// - a lane whose 32 values lie past the end of a row (the last chunk when K % 128 != 0) skips its weight load without
//   a zero-fill and gets zero scale bits; X is staged as zeros there, so its products are zeros (the dequantized fp4
//   is finite whatever the register held).
template <bool kNv, int NT, int U, int kBlockWarps, bool kActEpilogue>
__device__ __forceinline__ void fp4_warp_tile_pass(const SmallMGemm& g, const Fp4BlockTile& b, int64_t tb,
                                                   uint4* xs_raw) {
  constexpr int kGroup = kNv ? 16 : 32;
  // The block's warps share X, staged U chunks at a time (double-buffered): slot
  // ((u * NT + t) * 4 + j) * 32 + gq * 4 + (cq ^ sw(j)) holds the j-th 16 bytes of lane (gq, cq)'s 32
  // values of chunk u, tile t, so a warp reads its fragments as one conflict-free 512-byte run per j.
  // sw(j) = j for the 8- and 16-warp blocks (see stage_x), 0 for the 4-warp ones.
  uint4 (*xs)[U * NT * 4 * 32] = reinterpret_cast<uint4 (*)[U * NT * 4 * 32]>(xs_raw);
  const int64_t count = b.count, off = b.off;
  const int num_chunks = static_cast<int>(b.num_chunks), slices = static_cast<int>(b.slices);
  const int warp = b.warp, gq = b.gq, cq = b.cq;
  const int lane_chunks = (slices - cq + 3) / 4;  // chunks holding this lane's 32 values of a row
  auto scale_bits = [&](const uint8_t* p) -> uint32_t {
    return kNv ? *reinterpret_cast<const uint16_t*>(p) : uint32_t(*p);
  };

  // What this lane stages (see stage_x): 16 bytes of token gq of each tile, of the 32 values of slice x_slice, and
  // the chunks that hold that slice.
  constexpr bool kWholeSectors = kBlockWarps >= 8;
  const int x_slice = kWholeSectors ? warp % 4 : cq;
  const int x_chunks = kWholeSectors ? (slices - x_slice + 3) / 4 : lane_chunks;
  const bf16* x_src[NT];  // at chunk 0
  uint32_t live = 0;      // bit t: this lane's token of tile t is one of the expert's
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t m = tb + t * 8 + gq, r = m < count ? m : tb;
    live |= uint32_t(m < count) << t;
    x_src[t] = b.x + (g.x_row ? g.x_row[off + r] : off + r) * b.K + x_slice * 32 + (kWholeSectors ? cq : warp) * 8;
  }
  float acc[NT][4];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = 0.0f;

  // Staging, zeros for chunks, slices or tokens out of range:
  // - 4-warp blocks (8-row warp tiles): warp j copies piece j (16 bytes) of every lane's 32 values.
  //   Each lane reads 16 bytes of a 32-byte sector, but the reads stay simple: the 32-byte layout
  //   below measured 2-3% slower at 16-128 tokens (H200, session 13).
  // - 8- and 16-warp blocks (16-, 32- and 64-row tiles): warp w copies slice s = w % 4 (the 32 values of
  //   the lanes with cq == s) of every token of the (u, t) with (u * NT + t) % (kBlockWarps / 4) == w / 4,
  //   its lane (gq, cq) piece cq of token gq: four lanes read 64 contiguous bytes, whole sectors. X's
  //   reads from L2 bounded these tiles in 4-warp blocks (ncu: L2 75-83% busy, DRAM 15-23%); 128 rows
  //   per block and whole sectors cut the L2 sectors per weight row to a quarter (then L2 ~70% busy,
  //   issue slots 43-54%), 256 rows to an eighth. The cq ^ j swizzle of the slot keeps these writes conflict-free too.
  static_assert(kBlockWarps == 4 || kBlockWarps == 8 || kBlockWarps == 16,
                "warp tiles take blocks of 4, 8 or 16 warps");
  auto stage_x = [&](int buf, int ch0) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const bf16* at = x_src[t] + ch0 * 128;  // chunk ch0; skipped copies name chunk 0 (no read)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (kWholeSectors && (u * NT + t) % (kBlockWarps / 4) != warp / 4) continue;
        const bool valid = (live >> t & 1) && ch0 + u < x_chunks;
        const bf16* src = valid ? at + u * 128 : x_src[t];
        const int slot = kWholeSectors ? ((u * NT + t) * 4 + cq) * 32 + gq * 4 + (x_slice ^ cq)
                                       : ((u * NT + t) * 4 + warp) * 32 + gq * 4 + cq;
        cp_async_16(&xs[buf][slot], src, valid);
      }
    }
    cp_async_commit();
  };
  int buf = 0;
  __syncthreads();  // every warp is done reading xs (previous pass)
  stage_x(0, 0);
  const uint8_t *w0 = b.w_row0, *w1 = b.w_row1, *s0 = b.s_row0, *s1 = b.s_row1;  // at chunk ch0
  for (int ch0 = 0; ch0 < num_chunks; ch0 += U, buf ^= 1) {
    uint4 wa[U], wb[U];
    uint32_t sa[U], sb[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool ok = ch0 + u < lane_chunks;
      wa[u] = load_streaming_if(w0 + u * kChunkBytes, ok);
      wb[u] = load_streaming_if(w1 + u * kChunkBytes, ok);
      sa[u] = ok ? scale_bits(s0 + u * (128 / kGroup)) : 0;
      sb[u] = ok ? scale_bits(s1 + u * (128 / kGroup)) : 0;
    }
    w0 += U * kChunkBytes, w1 += U * kChunkBytes, s0 += U * (128 / kGroup), s1 += U * (128 / kGroup);
    // The weight loads above are in flight across the barrier.
    cp_async_wait_all();
    __syncthreads();  // X of chunks ch0.. is in xs[buf]; every warp is done with xs[buf ^ 1]
    if (ch0 + U < num_chunks) stage_x(buf ^ 1, ch0 + U);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (ch0 + u >= num_chunks) continue;  // the same for the whole warp
      uint32_t a[16], bw[16];
      dequant32<kNv>(wa[u], sa[u], a);
      dequant32<kNv>(wb[u], sb[u], bw);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        uint4 xv[4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          xv[j] = xs[buf][((u * NT + t) * 4 + j) * 32 + gq * 4 + (kWholeSectors ? cq ^ j : cq)];
#pragma unroll
        for (int st = 0; st < 8; ++st)
          mma_bf16_16816(acc[t], a[2 * st], bw[2 * st], a[2 * st + 1], bw[2 * st + 1], word(xv[st / 2], 2 * (st % 2)),
                         word(xv[st / 2], 2 * (st % 2) + 1));
      }
    }
  }
  pdl_launch_dependents();  // the block's only pass is done: the next kernel may launch
  store_small_m_tile<NT, kActEpilogue>(acc, b.gs, g, b.e, b.n0, b.wr0, b.wr1, tb, count, off);
}

// Chunks in flight per lane and row (U) of each token tile: 32-token tiles with U=2 were 3-9% faster
// than U=1 at 256-1024 tokens on gpt-oss-120b and qwen3-nvfp4 (H200, session 7), despite a few
// spilled registers. 64-token tiles (warp tiles only) take U=1: their staged X is then 32 KB, as the
// 32-token tiles' at U=2. The split-k blocks of 8-token tiles take U=6 (a step-at-a-time dequantization
// frees the registers, fp4_split_k_pass): one round of loads per warp at K = 2880, where U=4 took two —
// gpt-oss-120b 2.5% / 4% faster at 2 / 3 tokens than U=4 (H200, session 23).
template <int NT, bool kSplitK>
constexpr int kFp4U = NT == 1 ? (kSplitK ? 6 : 4) : NT == 8 ? 1 : 2;
// Split-k blocks of 8 warps (SmallMGemm::split_k_warps, 8-token tiles: ExpertsPath::fp4_split_k_warps1/2): 3 chunks a
// warp, 3 blocks an SM (80 registers, a few spills).
template <int NT, int kSplitWarps>
constexpr int kFp4SplitU = kSplitWarps == 8 ? 3 : kFp4U<NT, true>;

// kMaxNT: the largest token tile (8 * kMaxNT rows). Each pass takes the smallest tile that holds the
// expert's remaining rows (as small_m_gemm.cu does): one read of the weights per 8 * kMaxNT rows, and
// no mma work for empty columns. k is summed in the same order whatever the tile.
// kSplitU: the split-k blocks' chunks a warp in flight when fitted to short rows (2 or 4), else 0 (kFp4SplitU).
template <bool kNv, int kMaxNT, bool kSplitK, int kBlockWarps, int kSplitU = 0>
__global__ void __launch_bounds__(kBlockWarps * 32, (kBlocksPerSm<kNv, kMaxNT, kSplitK, kBlockWarps, kSplitU>))
    small_m_fp4_kernel(SmallMGemm g, RowPlan plan, Fp4DecodeOverlap overlap) {
  constexpr int kGroup = kNv ? 16 : 32;
  constexpr int kMaxSlots = kMaxNT * kFp4U<kMaxNT, kSplitK> * 4 * 32;  // NT * U * 4 * 32, largest at the largest tile
  __shared__ float partial[kSplitK ? kBlockWarps * kMaxNT * 4 * 32 : 1];
  __shared__ uint4 xs[kSplitK ? 1 : 2 * kMaxSlots];

  // Fp4DecodeOverlap (split-k blocks only): on a settled plan (GEMM2) they read their item and issue their first
  // weight loads before they wait on the previous grid; with early_trigger they let the next launch start at once.
  const bool wait_in_pass = kSplitK && overlap.plan_settled, early_trigger = kSplitK && overlap.early_trigger;
  if (!wait_in_pass) {
    pdl_wait();
    if (early_trigger) pdl_launch_dependents();
  }
  PlanItem item;  // a block row per item; expert -1 past the last
  if (wait_in_pass) {
    const int4 v = load_settled(reinterpret_cast<const int4*>(plan.items + blockIdx.y));
    item = {v.x, v.y, v.z, v.w};
  } else {
    item = plan.items[blockIdx.y];
  }
  if (item.expert < 0) return;
  const int e = item.expert;
  Fp4BlockTile b;
  b.wait_in_pass = wait_in_pass;
  b.early_trigger = early_trigger;
  b.e = e;
  b.off = item.offset;
  b.count = item.count;
  b.warp = threadIdx.x >> 5, b.lane = threadIdx.x & 31, b.gq = b.lane >> 2, b.cq = b.lane & 3;
  b.N = g.N, b.K = g.K;
  b.n0 = kSplitK ? int64_t(blockIdx.x) * kRowsPerBlock : (int64_t(blockIdx.x) * kBlockWarps + b.warp) * kRowsPerBlock;
  const int64_t row_bytes = b.K / 2;
  b.slices = b.K / 32, b.num_chunks = (b.K + 127) / 128;
  constexpr bool kAct = kHasActEpilogue<kMaxNT, kSplitK>;
  tile_weight_rows<kAct>(g, b.n0, b.gq, b.wr0, b.wr1);  // with a gated epilogue: a gate row and its up row
  // Rows past N are read at row N - 1 (fp4_split_k_pass, fp4_warp_tile_pass); their sums are never stored.
  const int64_t ar0 = min(b.wr0, b.N - 1), ar1 = min(b.wr1, b.N - 1);
  const uint8_t* w = static_cast<const uint8_t*>(g.w) + e * b.N * row_bytes;
  b.w_row0 = w + fp4_sm90_segment_offset(ar0, b.cq, row_bytes);  // the lane's segment of chunk 0
  b.w_row1 = w + fp4_sm90_segment_offset(ar1, b.cq, row_bytes);
  const uint8_t* s = g.w_fp4_scales + e * b.N * (b.K / kGroup);
  b.s_row0 = s + ar0 * (b.K / kGroup) + b.cq * (32 / kGroup);
  b.s_row1 = s + ar1 * (b.K / kGroup) + b.cq * (32 / kGroup);
  b.x = static_cast<const bf16*>(g.x);
  b.gs = kNv ? g.w_global[e] * kNvEpilogueFactor : 1.0f;  // exact: a power of two

  const int64_t end = min(b.count, int64_t(item.first) + plan.item_rows);
  fitted_pass<kMaxNT>(item.first, end, [&](auto nt, int64_t tb) {
    constexpr int NT = decltype(nt)::value;
    if constexpr (kSplitK)
      fp4_split_k_pass<kNv, NT, kSplitU ? kSplitU : kFp4SplitU<NT, kBlockWarps>, kBlockWarps, kAct>(g, b, tb, partial);
    else
      fp4_warp_tile_pass<kNv, NT, kFp4U<NT, false>, kBlockWarps, kAct>(g, b, tb, xs);
  });
}

// Warp tiles of 32 rows run in blocks of 8 warps (128 weight rows), of 64 rows in blocks of 16 (256
// rows, one block per SM), which cut the L2 reads of X per weight byte. With whole-sector staging and
// the 64-row tiles in 8-warp blocks: 1.29-1.53x the previous code (4-warp blocks, half-sector copies; the
// grouped path at 64 rows per expert) at 512-2048 tokens on gpt-oss-120b, 1.18-1.47x at 512-1024 on
// qwen3-nvfp4; the same with 4-warp blocks, 1.01-1.16x. 16-warp blocks then: 64-row tiles 1.08-1.09x on
// gpt-oss-120b at 2048 tokens, 0.98-1.00x on qwen3-nvfp4 at 1024; 32-row tiles 0.91x at 512. At 16-row
// tiles 8 warps were 8% faster on gpt-oss-120b at 256 tokens but 5% slower on qwen3-nvfp4 at 128 (H200,
// session 13), so they kept 4 until the sm90 packing cut the dequantization's instructions: then ncu had the
// 4-warp kernel L2-bound at qwen3-nvfp4's 128 tokens (L2 79% busy, DRAM 56%), and 8-warp blocks with whole-sector
// staging ran 1.124x there and 1.214x at gpt-oss-120b's 256, 0.996-1.001x at 16-64 tokens, bit-equal (H100,
// session 77).
template <bool kNv, bool kSplitK>
void launch_typed(const SmallMGemm& g, const RowPlan& plan, int64_t max_items, int tile_tokens, cudaStream_t s,
                  Fp4DecodeOverlap overlap) {
  FMOE_CHECK(plan.items && plan.item_rows == tile_tokens, "the fp4 small-M GEMM of ", tile_tokens,
             "-row tiles needs a plan with work items of as many rows, got item_rows=", plan.item_rows);
  constexpr int kWide = kSplitK ? kWarps : 2 * kWarps;
  const auto go = [&](auto kernel, int block_warps) {
    const int64_t rows_per_block = kRowsPerBlock * (kSplitK ? 1 : block_warps);
    const dim3 grid(static_cast<unsigned>((g.N + rows_per_block - 1) / rows_per_block),
                    static_cast<unsigned>(max_items));
    launch(kernel, grid, dim3(block_warps * 32), s, g, plan, overlap);
  };
  switch (tile_tokens) {
    case 8:
      if constexpr (kSplitK) {
        if (g.split_k_warps == 8) {
          go(small_m_fp4_kernel<kNv, 1, true, 2 * kWarps>, 2 * kWarps);
          break;
        }
        const int64_t warp_chunks = ((g.K + 127) / 128 + kWarps - 1) / kWarps;
        if (g.split_k_fit && warp_chunks <= 2) {
          go(small_m_fp4_kernel<kNv, 1, true, kWarps, 2>, kWarps);
          break;
        }
        if (g.split_k_fit && warp_chunks <= 4) {
          go(small_m_fp4_kernel<kNv, 1, true, kWarps, 4>, kWarps);
          break;
        }
      }
      go(small_m_fp4_kernel<kNv, 1, kSplitK, kWarps>, kWarps);
      break;
    case 16: go(small_m_fp4_kernel<kNv, 2, kSplitK, kWide>, kWide); break;
    case 32: go(small_m_fp4_kernel<kNv, 4, kSplitK, kWide>, kWide); break;
    case 64:
      if constexpr (!kSplitK) {
        go(small_m_fp4_kernel<kNv, 8, false, 4 * kWarps>, 4 * kWarps);
        break;
      }
      [[fallthrough]];
    default:
      FMOE_FAIL("the fp4 small-M GEMM takes tiles of 8, 16 or 32 rows, and 64 with a tile per warp (warp_tiles); got ",
                tile_tokens, kSplitK ? " with split-k blocks" : "");
  }
}

}  // namespace

void launch_small_m_gemm_fp4(const SmallMGemm& g, const RowPlan& plan, int tile_tokens, cudaStream_t s,
                             Fp4DecodeOverlap overlap) {
  const bool warp_tiles = g.warp_tiles;
  const int64_t max_items = plan.item_grid;
  if (max_items == 0) return;
  if (tile_tokens == kFp4WgmmaTileTokens) return launch_fp4_wgmma_gemm(g, plan, s);
  FMOE_CHECK(g.K % 32 == 0, "the fp4 small-M GEMM needs K % 32 == 0, got K=", g.K);
  FMOE_CHECK(g.split_k_warps == 4 || g.split_k_warps == 8,
             "the fp4 split-k blocks take 4 or 8 warps (SmallMGemm::split_k_warps), got ", g.split_k_warps);
  const bool nv = g.weights == SmallMWeights::nvfp4;
  if (nv && warp_tiles) launch_typed<true, false>(g, plan, max_items, tile_tokens, s, overlap);
  else if (nv) launch_typed<true, true>(g, plan, max_items, tile_tokens, s, overlap);
  else if (warp_tiles) launch_typed<false, false>(g, plan, max_items, tile_tokens, s, overlap);
  else launch_typed<false, true>(g, plan, max_items, tile_tokens, s, overlap);
}

}  // namespace fusedmoe::cuda
