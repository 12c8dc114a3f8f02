// Grouped GEMM for fp4 weights (W4A16) on Hopper's warpgroup tensor cores, the path of the nvfp4 and
// mxfp4 experts above 8 rows per expert — small_m_gemm_fp4.cu's product and formats:
//   Y[r, n] = gs[e] * sum_k X[src(r), k] * e2m1(W[e, n, k]) * s[e, n, k / G]  (+ bias[e, n])
// without the bf16 copy of the weights the CUTLASS path needs (4 bytes written and read again per
// weight value, more than the GEMMs themselves at 1-8K tokens).
// Swap-AB: the weights are wgmma's A operand, dequantized in registers (fp4_util.cuh's bit placement
// and group multipliers, exact); the tokens of one plan item are B, bf16 in shared memory.
// A unit of work: one work item of the row plan (up to 256 rows of one expert, plus the expert's last 1-32 rows
// as a tail when they follow a full item) against 128 T weight rows, in 3 warpgroups. The item's rows
// pick the shape (Shape below): up to 32 rows, T = 4 and n = 32 products; up to 64, T = 4 and n = 64; up to
// 128, T = 2 and n = 128;
// above, T = 1 and n = 256 (+ n = 32 for a tail). Two kernels: a block per unit (fp4_wgmma_kernel), or
// (SmallMGemm::persistent) one block per SM running units as it claims them from a counter, the producer loading
// the next unit while the consumers store the last (fp4_wgmma_persistent_kernel; T = 1 and n = 256 for every item).
// The persistent kernel's GEMM1 may carry silu_mul or swiglu_oai (SmallMGemm::act_epilogue, its kAct instance): the
// consumers take each 16-row group of a block as 8 gate rows and their 8 up rows (gated_block_row; swiglu_oai's
// interleaved rows stay in their order in shared memory, oai_stage_place), so that store_gated_tiles pairs them in
// its registers and writes h2 [R, I] itself, the bits of GEMM1 + the activation kernel.
// - a producer fills a 4-stage ring of k tiles (64 values) with cp.async: the item's X rows gathered
//   through x_row into the K-major, 128-byte-swizzled layout wgmma reads (the persistent kernel, X in plan order and
//   its rows known — GEMM2's h2 —: TMA boxes of 32 rows into the same layout), the packed W as it lies (the sm90
//   packing's 16-row tiles: 512 bytes per 16 rows a k tile); it stores each row's bf16 group multipliers of the
//   tile, made from the scale bytes (loaded kScaleAhead tiles ahead into registers).
//   A stage's full barrier completes when every producer thread has seen its copies land (a tile later)
//   and fenced them for wgmma's async proxy; its empty barrier when every consumer thread is done with it.
// - two consumers, T m64 tiles of weight rows each, m64nNk16 wgmma with A from registers. A lane's
//   fragment of a 32-value chunk of a weight row is the chunk's word c in the sm90 packing (lane 4g + c;
//   fp4_util.cuh): one 4-byte shared load gives a packed word whose unpacking and scaling are the A
//   registers of two k16 steps. Chunk h + 1 is unpacked while chunk h's wgmma run and scaled
//   into the other register buffer once chunk h - 1's are done (T = 4: one buffer, the other consumer's
//   wgmma fill the gap). Consumers read no global memory in the loop (the multipliers come through
//   shared memory), so nothing but the stages holds up a wgmma fence. The epilogue reuses the ring (a block per
//   unit) or goes through an 8 KiB buffer per consumer (persistent).
// Limits: K % 64 == 0 and N % 8 == 0 (the CUDA fp4 experts' hidden and intermediate sizes), y 16-byte
// aligned; plan items of 256 rows.
// Measurements behind this shape, and what was tried and dropped: docs/KERNEL_NOTES.md (fp4_wgmma_gemm.cu).
#include <algorithm>
#include <atomic>
#include <type_traits>

#include "cuda/cuda_util.h"
#include "cuda/kernels/fp4_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/mma_util.cuh"
#include "cuda/kernels/tensor_map.h"
#include "cuda/kernels/wgmma_pipeline.cuh"
#include "cuda/kernels/wgmma_util.cuh"
#include "fusedmoe/formats.h"

namespace fusedmoe::cuda {
namespace {

constexpr int kConsumers = kWgmmaConsumers;       // consumer warpgroups
constexpr int kThreads = 128 * (kConsumers + 1);  // + the producer warpgroup (the last)
constexpr int kSlabRows = 64 * kConsumers;        // weight rows of a block per m64 tile of each consumer
constexpr int kTileK = 64;                        // 2 chunks of 32 values, 4 k16 steps
constexpr int kStages = 4;
// Tiles ahead the producer loads its scale words (a ring of registers). Same-run A/B against 1, H200
// (session 24, 2 rounds): 3 was 1.05x on gpt-oss-120b at 4096/8192 tokens, 1.02x on qwen3-nvfp4, within
// +-1% at 1024/2048; 2 gained half as much (no spill), 4 less than 3 (132 bytes of spill stores). 3 spills
// 28-32 bytes of the producer's registers to local memory (L1) and still ran fastest.
constexpr int kScaleAhead = 3;
constexpr int kTileTokens = kFp4WgmmaTileTokens;
// An expert's last rows, up to kTailTokens past a full item of kTileTokens, are that item's block's tail:
// m64n32 products on the same dequantized weights, instead of a block of their own that would dequantize
// all of the expert's weights again for a few rows (at 8192 tokens, about half of gpt-oss-120b's experts
// end in such a partial item).
constexpr int kTailTokens = 32;
constexpr int kBlockTokens = kTileTokens + kTailTokens;
// A block's shape for items of up to kTok rows: kT m64 tiles of weight rows per consumer (128 kT rows a
// block) against kTok tokens. kTok * kT = 256 (every shape but n = 32, below) keeps the accumulators at 128
// registers and a k tile's tensor work the same, so that an item of few rows takes fewer, not emptier, blocks:
// a 128-row block of a 16-row item was bound by the latency of its k-tile chain, at about 60% of a
// full item's time (H200, session 15). Items of up to 32 rows take n = 32 at T = 4 (half the tensor work of
// n = 64, which left half its columns empty): same-run A/B on H100 (session 83) 1.04x at gpt-oss-120b's 1024
// tokens (32 rows per expert), 1.02-1.07x at qwen3-nvfp4's 512-1024, 0.99-1.01x at 1536-4096.
template <int kTok, int kT, int kTail = 0>
struct Shape {
  static constexpr int kBlockRows = kSlabRows * kT;
  static constexpr int kXBytes = (kTok + kTail) * kTileK * 2;  // token rows of 128 bytes
  static constexpr int kWBytes = kBlockRows * kTileK / 2;  // weight rows of 32 bytes
  static constexpr int kSBytes = kBlockRows * 8;           // their group multipliers, 8 bytes a row
};
constexpr int stage_bytes(int x, int w, int s) { return (x + w + s + 1023) / 1024 * 1024; }
template <class S>
constexpr int stage_bytes() { return stage_bytes(S::kXBytes, S::kWBytes, S::kSBytes); }
constexpr int kStageBytes = stage_bytes<Shape<kTileTokens, 1, kTailTokens>>();
static_assert(stage_bytes<Shape<256, 1>>() <= kStageBytes && stage_bytes<Shape<128, 2>>() <= kStageBytes &&
              stage_bytes<Shape<64, 4>>() <= kStageBytes && stage_bytes<Shape<32, 4>>() <= kStageBytes);
// The stages (X 1024-byte aligned), the full and empty barriers of each stage, each stage's big-scale
// flags (a word per producer warp), the item's rows of X (+ alignment). Once both consumers are done with
// the stages, the epilogue reuses them: a consumer's output tiles take (kTok + kTail) x 64 kT bf16 <= 36
// KiB, less than half the ring. The total stays below 195 KiB: above it the L1 cache left beside shared memory
// halves, and the mxfp4 scales of 512-row blocks no longer fit in it (0.86x at 1024 tokens, H200).
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + 2 * kStages * 8 + kStages * 4 * sizeof(uint32_t) +
                              kBlockTokens * sizeof(int32_t) + 1024;
static_assert(kSmemBytes <= 195 * 1024);
constexpr int kEpiBytes = kBlockTokens * 128;
static_assert(kConsumers * kEpiBytes <= kStages * kStageBytes);
// The persistent kernel's: the stages, an 8 KiB epilogue buffer per consumer apart from the ring (the producer fills
// the ring for the next unit meanwhile; passes of 64 tokens' 64 weight rows, store_tiles), the barriers and flags as
// above, its claim queue (+ alignment).
constexpr int kPersistentEpiTokens = 64;
constexpr int kPersistentEpiBytes = kPersistentEpiTokens * 128;
constexpr int kQueueBytes = 80;  // ClaimQueue<ItemUnit>
constexpr size_t kPersistentSmemBytes = size_t(kStages) * kStageBytes + kConsumers * kPersistentEpiBytes +
                                        2 * kStages * 8 + kStages * 4 * sizeof(uint32_t) + kQueueBytes + 1024;
static_assert(kPersistentSmemBytes <= 195 * 1024);

__device__ inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// setmaxnreg budgets: 88 x 128 + 208 x 256 <= 168 x 384, the launch's. The persistent kernel's producer, which
// carries its unit loop, takes 96 and its consumers 200: at 88 it spilled a register twice a tile, its consumers
// waited on full stages 19% of the time (7% in the one-unit kernel; ncu, gpt-oss-120b GEMM1 at 8192 tokens) and
// the kernel ran 0.93x the one-unit kernel; at 96, 1.01x. (The one-unit kernel at 96 / 200: 0.98-0.99x.)
constexpr uint32_t kProducerRegs = 88, kConsumerRegs = 208;
constexpr uint32_t kPersistentProducerRegs = 96, kPersistentConsumerRegs = 200;

template <int kTok>
__device__ inline void wgmma_rs(float (&d)[kTok / 2], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (kTok == 256) wgmma_m64n256k16_rs(d, a, desc);
  else if constexpr (kTok == 128) wgmma_m64n128k16_rs(d, a, desc);
  else if constexpr (kTok == 64) wgmma_m64n64k16_rs(d, a, desc);
  else wgmma_m64n32k16_rs(d, a, desc);
}

// A k tile's weights in shared memory (ws) lie as in global memory (formats.h, a tensor of 32-byte rows: the
// static_assert below): 512 bytes per 16 block rows, segment h (the tile's chunk h, 32 values) of their row i at
// 256 h + 16 i. So each 32-byte sector a producer warp copies (rows 2j, 2j + 1 of one segment) lands in 32 contiguous
// bytes. With rows of 32 bytes in shared memory, where a sector's halves land 32 bytes apart, the tiled order doubled
// the producer's L2 read requests (session 80, ncu: 37M -> 70M at gpt-oss-120b's 1024 tokens, 0.94x).
__host__ __device__ constexpr int w_stage_offset(int r, int h) { return (r >> 4) * 512 + h * 256 + (r & 15) * 16; }
constexpr bool stage_is_the_packing() {
  for (int r = 0; r < 256; ++r)
    for (int h = 0; h < 2; ++h)
      if (w_stage_offset(r, h) != fp4_sm90_segment_offset(r, h, kTileK / 2)) return false;
  return true;
}
static_assert(stage_is_the_packing(), "a k tile's stage is the sm90 packing of 32-byte rows");

// GEMM1 with the activation epilogue and swiglu_oai's interleaved rows (gate j at weight row 2 j, up at 2 j + 1): a
// block's 16-row group is one tile of 16 weight rows, 8 gate rows then their 8 up rows (gated_block_row). Copied to
// block rows in that order, each 32-byte sector's halves (weight rows 2 j, 2 j + 1) would land 128 bytes apart: the
// doubled L2 requests above (gpt-oss-120b's 8192 tokens ran 0.93x). So the stage keeps the weight rows' order, weight
// row q of the tile at place q ^ (q / 8 % 2) (16 bytes each): a sector's halves stay in its 32 bytes, swapped in the
// tile's second half, so that a consumer warp's 8 gate (or up) rows of a chunk fall in distinct banks.
__device__ inline int oai_stage_place(int q) { return q ^ ((q >> 3) & 1); }

// The lane's packed word of chunk h (32 values: k16 steps 2h, 2h + 1) of its block row row0 + 64 t + 8 hi of a k tile
// in shared memory: word c of the chunk, which the sm90 packing (fp4_util.cuh) made of the checkpoint's bytes c,
// c + 4, c + 8, c + 12, i.e. values k = 2c, 2c + 1 | 2c + 8, 2c + 9 of step 2h, then of step 2h + 1. lane_ws: the
// stage's ws + the lane's offset of its row hi (lane_w_offsets; 64 rows further is 2048 bytes). A warp's 8 rows g
// of one chunk fall in distinct banks.
__device__ inline uint32_t load_packed(const uint8_t* lane_ws, int t, int h) {
  return *reinterpret_cast<const uint32_t*>(lane_ws + 2048 * t + 256 * h);
}

// The offsets in a stage's weights of word c of the lane's block rows row0 (hi = 0) and row0 + 8 (hi = 1), row0 % 16
// < 8: w_stage_offset, or with oai_pairs the gate and up weight rows 2 g, 2 g + 1 at their oai_stage_place.
__device__ inline void lane_w_offsets(int row0, int c, bool oai_pairs, int (&off)[2]) {
  const int base = w_stage_offset(row0, 0) + 4 * c, g = row0 & 15, tile_word = base - 16 * g;
  off[0] = oai_pairs ? tile_word + 16 * oai_stage_place(2 * g) : base;
  off[1] = oai_pairs ? tile_word + 16 * oai_stage_place(2 * g + 1) : base + 128;
}

// Both halves of a bf16x2 word from its low (hi = 0) or high half.
__device__ inline __nv_bfloat162 broadcast_half(uint32_t w, int hi) {
  const uint32_t b = prmt(w, 0, hi ? 0x3232 : 0x1010);
  return *reinterpret_cast<const __nv_bfloat162*>(&b);
}

// A row's group multipliers of a k tile, as the producer stores them for the consumers: bf16 pairs,
// nvfp4 word h = the multipliers of groups 2h, 2h + 1 (k16 steps 2h, 2h + 1); mxfp4 word 0 = groups 0
// and 1 (chunks 0 and 1), word 1 = the two scale bytes themselves. `big`: an mxfp4 scale above 2 (its
// multiplier is 2^126, see ue8m0_multiplier).
template <bool kNv>
__device__ inline uint2 tile_multipliers(uint32_t scales, bool& big) {
  const auto half = [](__nv_bfloat162 m) { return uint32_t(__bfloat16_as_ushort(m.x)); };
  big = false;
  if constexpr (kNv) {
    const float2 lo = nv_multipliers_f32(scales), hi = nv_multipliers_f32(scales >> 16);
    const __nv_bfloat162 m01 = __floats2bfloat162_rn(lo.x, lo.y), m23 = __floats2bfloat162_rn(hi.x, hi.y);
    return make_uint2(*reinterpret_cast<const uint32_t*>(&m01), *reinterpret_cast<const uint32_t*>(&m23));
  } else {
    bool big0, big1;
    const uint32_t m0 = half(ue8m0_multiplier(scales & 0xff, big0));
    const uint32_t m1 = half(ue8m0_multiplier((scales >> 8) & 0xff, big1));
    big = big0 || big1;
    return make_uint2(m0 | m1 << 16, scales & 0xffff);
  }
}

// Chunk h of the lane's rows (g, g + 8 of its m64 tile) unpacked from their packed words pk[hi] with the
// rows' multiplier words mw[hi] (tile_multipliers), not yet scaled: q[hi][i] = values times 2^-126
// (fp4_util.cuh), m0 / m1 the multipliers of the two k16 steps. It writes no fragment register, so it
// may run while the wgmma reading them are in flight.
struct UnpackedChunk {
  uint32_t q[2][4];
  __nv_bfloat162 m0[2], m1[2];
};

template <bool kNv>
__device__ inline void unpack_chunk(const uint32_t (&pk)[2], const uint2 (&mw)[2], int h, UnpackedChunk& c) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    e2m1x8_sm90_bf16_times_2m126(pk[hi], c.q[hi]);
    if constexpr (kNv) {
      const uint32_t w = h ? mw[hi].y : mw[hi].x;
      c.m0[hi] = broadcast_half(w, 0);
      c.m1[hi] = broadcast_half(w, 1);
    } else {
      c.m0[hi] = c.m1[hi] = broadcast_half(mw[hi].x, h);
    }
  }
}

// The A registers of steps 2h, 2h + 1 from an unpacked chunk: fr[step][i] in wgmma's A order (rows
// g, g + 8 at k 2c, 2c + 1, then at k 2c + 8, 2c + 9).
__device__ inline void scale_chunk(const UnpackedChunk& c, uint32_t (&fr)[2][4]) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    fr[0][hi] = mul_bf16x2(c.q[hi][0], c.m0[hi]);
    fr[0][2 + hi] = mul_bf16x2(c.q[hi][1], c.m0[hi]);
    fr[1][hi] = mul_bf16x2(c.q[hi][2], c.m1[hi]);
    fr[1][2 + hi] = mul_bf16x2(c.q[hi][3], c.m1[hi]);
  }
}

// mxfp4 scales above 2 (not seen in checkpoints; the producer flags the tiles that have one): the
// chunk's fragments of the rows whose scale byte u (mw[hi].y, byte h) is above 128 were scaled
// by 2^126 and take 2^(u - 127) in a second multiply.
__device__ inline void rescale_big_rows(const uint2 (&mw)[2], int h, uint32_t (&fr)[2][4]) {
#pragma unroll
  for (int hi = 0; hi < 2; ++hi) {
    const uint32_t u = (mw[hi].y >> (8 * h)) & 0xff;
    if (u <= 128) continue;
    const __nv_bfloat162 s2 = __float2bfloat162_rn(ue8m0_to_float(static_cast<uint8_t>(u)));
#pragma unroll
    for (int st = 0; st < 2; ++st) {
      fr[st][hi] = mul_bf16x2(fr[st][hi], s2);
      fr[st][2 + hi] = mul_bf16x2(fr[st][2 + hi], s2);
    }
  }
}

// Pins the fragment registers of kT tiles (see wgmma_fence_operand).
template <int kT>
__device__ inline void fence_fragments(uint32_t (&fr)[kT][2][4]) {
#pragma unroll
  for (int t = 0; t < kT; ++t)
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
      for (int i = 0; i < 4; ++i) wgmma_fence_operand(fr[t][s][i]);
}


// The producer warpgroup: copies k tiles into the stages (full[s] completes when a tile has landed) once
// the consumers have released the stage (empty[s]). X as wgmma's B (16-byte chunk c of token row t at
// chunk c ^ (t % 8) of the row's 128 bytes), W's rows unchanged, each row's group multipliers of the tile
// (tile_multipliers, 8 bytes a row), zeros past the rows or N; for mxfp4, each
// producer warp's flag of the stage says whether one of its rows has a scale above 2. The scales go
// through registers (mxfp4 rows of K/32 bytes need not be 4-byte aligned for cp.async) and become
// multipliers here, so that the consumers neither read global memory nor decode scales in their loop.
// The unit's X rows: src_rows (staged in shared memory, -1 past the rows), or (kPersistent) the `rows` rows from
// `first` on through x_row, the stage ring carried on from the previous unit (ring). kTmaX (persistent, x_row null):
// those rows by TMA through x_map (boxes of 32 rows): one thread issues a stage's boxes, whose bytes the stage's full
// barrier waits for besides the producer threads' arrivals (18 16-byte copies a thread a stage before: GEMM2
// 1.04-1.05x at 4096-8192 tokens, H200, session 55). Gathered rows (GEMM1) as one-row boxes ran 2.7-2.9x slower.
template <bool kNv, int kTok, int kT, int kTail, bool kPersistent = false, bool kAct = false, bool kTmaX = false>
__device__ __forceinline__ void produce(const SmallMGemm& g, uint8_t* smem, uint32_t full, uint32_t empty,
                                        uint32_t* flags, const int32_t* src_rows, int e, int64_t n0,
                                        int64_t rows = 0, int64_t first = 0, Ring<kStages>* ring = nullptr,
                                        const CUtensorMap* x_map = nullptr) {
  static_assert(!kTmaX || kPersistent, "X by TMA: the persistent kernel");
  using S = Shape<kTok, kT, kTail>;
  constexpr int kGroup = kNv ? 16 : 32;
  const int64_t N = g.N, K = g.K, row_bytes = K / 2, groups = K / kGroup;
  const int num_kt = static_cast<int>(K / kTileK);
  const int p = threadIdx.x - 128 * kConsumers;
  const bf16* x = static_cast<const bf16*>(g.x);
  const uint8_t* w = static_cast<const uint8_t*>(g.w) + e * N * row_bytes;
  // X: this thread copies two 16-byte chunks of rows p / 4 + 32 i, all with t % 8 == (p / 4) % 8 (two fixed
  // swizzled slots). Persistent: chunks cp and cp + 4, so that a warp's copy instruction reads the first or the
  // second half of its 8 rows, whole 32-byte sectors; with chunks 2 cp and 2 cp + 1 (the one-unit kernel's) each
  // instruction touched every sector of a row for half its bytes, twice the L2 sector requests (ncu). Persistent
  // GEMMs 1.02-1.07x at 4096-8192 tokens; the one-unit kernel ran 1.7-2% slower with it at 2048-4096 (H200, session
  // 54). W: warp p / 32's lane l copies segment l / 16 of a k tile of block row 16 (p / 32) + 64 i + l % 16: a
  // warp's copy is 512 contiguous bytes of global and of shared memory (w_stage_offset). The source pointers stay in
  // registers, one per X row, and step a tile at a time (rows past the item or N copy nothing, from a valid address:
  // the expert's first row), so that a copy issues at a few instructions.
  const int cp = p & 3, t8 = (p >> 2) & 7;
  const int slot0 = ((kPersistent ? cp : 2 * cp) ^ t8) << 4, slot1 = ((kPersistent ? cp + 4 : 2 * cp + 1) ^ t8) << 4;
  constexpr int kXRows = (kTok + kTail) / 32;  // X rows a thread copies (kTmaX: 32-row boxes)
  const bf16* x_src[kXRows];
  uint32_t x_ok = 0;
#pragma unroll
  for (int i = 0; i < (kTmaX ? 0 : kXRows); ++i) {
    int32_t src;
    if constexpr (kPersistent) {
      const int64_t r = (p >> 2) + 32 * i;
      src = r < rows ? (g.x_row ? __ldg(g.x_row + first + r) : static_cast<int32_t>(first + r)) : -1;
    } else {
      src = src_rows[(p >> 2) + 32 * i];
    }
    x_src[i] = x + (src >= 0 ? int64_t(src) * K : 0) + (kPersistent ? cp * 8 : cp * 16);
    x_ok |= uint32_t(src >= 0) << i;
  }
  const int w_row = 16 * (p >> 5) + (p & 15), w_half = (p >> 4) & 1;  // w_stage_offset(w_row, w_half) = 16 p
  // swiglu_oai's GEMM1: the weight rows' own order (oai_stage_place), row w_row of the tile's 16 from n0.
  const bool oai_pairs = kAct && g.act.kind == ActivationKind::swiglu_oai;
  const int w_dst = 16 * (oai_pairs ? (p & ~15) + oai_stage_place(p & 15) : p);
  constexpr int kWCopies = S::kBlockRows * 2 / 128;
  const uint8_t* w_src[kWCopies];
  uint32_t w_ok = 0;
#pragma unroll
  for (int i = 0; i < kWCopies; ++i) {
    const int64_t r = kAct && !oai_pairs ? gated_block_row(g, n0, w_row + 64 * i) : n0 + w_row + 64 * i;
    w_src[i] = w + fp4_sm90_segment_offset(r < N ? r : 0, w_half, row_bytes);  // segment w_half of k tile 0
    w_ok |= uint32_t(r < N) << i;
  }
  // Scales: this thread's rows p + 128 j. Rows past N read the expert's first row: they scale zero-filled
  // weights into accumulator rows that are never stored, so the loaded word needs no mask (a select on it
  // made the producer wait for every load).
  const uint8_t* s_row[kT];
#pragma unroll
  for (int j = 0; j < kT; ++j) {
    if constexpr (kAct) {
      const int64_t r = gated_block_row(g, n0, p + 128 * j);
      s_row[j] = g.w_fp4_scales + (e * N + (r < N ? r : 0)) * groups;
    } else {
      const bool ok = n0 + p + 128 * j < N;
      s_row[j] = g.w_fp4_scales + (e * N + (ok ? n0 + p + 128 * j : 0)) * groups;
    }
  }
  const auto load_scale = [&](int j, int kt) -> uint32_t {
    if constexpr (kNv) return __ldg(reinterpret_cast<const uint32_t*>(s_row[j]) + kt);
    else return __ldg(reinterpret_cast<const uint16_t*>(s_row[j]) + kt);
  };
  // Tile kt's multipliers are made from scale words loaded kScaleAhead tiles earlier, into a ring of
  // registers that the loop, unrolled kScaleAhead times, names statically (a move along the ring would wait
  // for the load). A tile ahead was too short: the producer's use of the word held 10% of gpt-oss-120b
  // GEMM1's stall samples at 8192 tokens, in the middle of its copies (ncu, H200). (Loaded after the
  // copies, they were used a few instructions later, and the producer waited for every load while the
  // consumers waited for the producer, H200.)
  uint32_t sw[kScaleAhead][kT];
#pragma unroll
  for (int d = 0; d < kScaleAhead; ++d)
#pragma unroll
    for (int j = 0; j < kT; ++j) sw[d][j] = load_scale(j, min(d, num_kt - 1));
  int st = 0, prev_st = 0;
  uint32_t empty_parity = 1;  // the parity of the stage's previous release, from the second round on
  if constexpr (kPersistent) {
    st = ring->st;
    empty_parity = ring->phase ^ 1;
  }
  for (int kt0 = 0; kt0 < num_kt; kt0 += kScaleAhead) {
#pragma unroll
    for (int d = 0; d < kScaleAhead; ++d) {
      const int kt = kt0 + d;
      if (kt >= num_kt) break;
      bool big = false;
      uint2 m[kT];
#pragma unroll
      for (int j = 0; j < kT; ++j) {
        bool row_big;
        m[j] = tile_multipliers<kNv>(sw[d][j], row_big);
        big |= row_big;
        sw[d][j] = load_scale(j, min(kt + kScaleAhead, num_kt - 1));
      }
      // Persistent: every tile waits (on a fresh barrier a wait for parity 1, the phase before its first, passes at
      // once), so that no register counts the tiles of earlier units (the producer is short of them: see
      // kPersistentProducerRegs).
      if (kPersistent || kt >= kStages) mbar_wait(empty + 8 * st, empty_parity);
      uint8_t* xs = smem + st * kStageBytes;
      uint8_t* ws = xs + S::kXBytes;
      uint8_t* x_dst = xs + (p >> 2) * 128;
      if constexpr (kTmaX) {
        // One thread: the stage's X rows in 32-row boxes (rows past the unit meet accumulator columns that are never
        // stored; past the tensor they read as zeros). The full barrier waits for their bytes besides the arrivals.
        if (p == 0) {
          mbar_expect_tx(full + 8 * st, kXRows * 32 * 128);
#pragma unroll
          for (int i = 0; i < kXRows; ++i)
            tma_load_2d(smem_addr(xs) + i * 32 * 128, x_map, kt * kTileK, static_cast<int32_t>(first) + 32 * i,
                        full + 8 * st);
        }
      }
#pragma unroll
      for (int i = 0; i < (kTmaX ? 0 : kXRows); ++i) {
        const bool ok = (x_ok >> i) & 1;
        cp_async_16(x_dst + i * 32 * 128 + slot0, x_src[i], ok);
        cp_async_16(x_dst + i * 32 * 128 + slot1, x_src[i] + (kPersistent ? 32 : 8), ok);
        x_src[i] += kTileK;
      }
#pragma unroll
      for (int i = 0; i < kWCopies; ++i) {
        cp_async_16(ws + w_dst + 2048 * i, w_src[i], (w_ok >> i) & 1);
        w_src[i] += kTileK / 32 * 16 * kFp4TileRows;  // the tile's 2 segments, 2 segment columns of 16 rows
      }
#pragma unroll
      for (int j = 0; j < kT; ++j) reinterpret_cast<uint2*>(ws + S::kWBytes)[p + 128 * j] = m[j];
      if constexpr (!kNv) {
        const bool any = __any_sync(0xffffffffu, big);
        if ((p & 31) == 0) flags[4 * st + (p >> 5)] = any;
      }
      cp_async_commit();
      // Tile kt - 1 is complete once its copies have landed: they were issued a tile ago.
      if (kt > 0) {
        cp_async_wait_group<1>();
        publish_stage(full + 8 * prev_st);
      }
      prev_st = st;
      if (++st == kStages) {
        st = 0;
        empty_parity ^= 1;
      }
    }
  }
  cp_async_wait_group<0>();
  publish_stage(full + 8 * prev_st);
  if constexpr (kPersistent) *ring = {st, empty_parity ^ 1};
}

// A consumer warpgroup: its kT m64 tiles of the block's weight rows against the item's kTok token rows,
// all of k, then the epilogue into Y rows first_row .. first_row + rows - 1. Each 32-value chunk of a
// k tile is scaled into fr[chunk % kBuf] and issued as 2 kT wgmma. With two buffers the next chunk is
// scaled as soon as the previous one is done, while this one runs (else the other consumer's wgmma fill
// the gap); where registers allow (kEarly) it is also unpacked before that wait. The next tile's stage
// is waited for and read while this tile's last chunk runs (issued first). Every consumer thread arrives on a stage's
// empty barrier once its wgmma reading it are done and its own loads from it have returned (with one
// arrival per warpgroup, racecheck reported the producer's copies racing with the other warps' loads).
// kPersistent: the stage ring carried on from the previous unit (ring), the epilogue through epi.
template <bool kNv, int kTok, int kT, int kTail, bool kPersistent = false, bool kAct = false>
__device__ __forceinline__ void consume(const SmallMGemm& g, uint8_t* smem, uint32_t full, uint32_t empty,
                                        const uint32_t* flags, int e, int64_t n0, int64_t rows, int64_t first_row,
                                        uint8_t* epi = nullptr, Ring<kStages>* ring = nullptr) {
  using S = Shape<kTok, kT, kTail>;
  // Registers: 128 accumulators (+ 16 of a tail) + fragments (8 kT kBuf) + unpacked chunks (12 kT if kEarly).
  constexpr int kBuf = kT <= 2 ? 2 : 1;
  constexpr bool kEarly = kT <= 2;
  // kAhead (the persistent kernel): chunk 1's shared loads go out before chunk 0's wgmma are issued, not after them,
  // where the unpacking right behind waited on their latency (6% of the stall samples, ncu, qwen3-nvfp4 GEMM1 at 8192
  // tokens, H200). Persistent GEMMs 1.00-1.03x at 4096-8192 tokens; the one-unit kernel ran 1-3% slower with it
  // (session 54). The next tile's wait and loads follow chunk 1's wgmma issue: placed before it (session 54's order),
  // a late stage held back wgmma whose operands were ready (1.004x / 1.017x at qwen3-nvfp4's / gpt-oss-120b's 8192
  // tokens, H100, session 93).
  constexpr bool kAhead = kPersistent && kEarly;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, gq = lane >> 2, cq = lane & 3;
  const int num_kt = static_cast<int>(g.K / kTileK);
  // The lane's fragment rows in the block for tile t: row0 + 64 t and 8 below.
  const int row0 = 64 * kT * wg + 16 * warp + gq;
  int lane_w[2];  // load_packed's lane offsets in a stage's weights
  lane_w_offsets(row0, cq, kAct && g.act.kind == ActivationKind::swiglu_oai, lane_w);

  float acc[kT][kTok / 2];
  constexpr int kTailAcc = kTail ? kTail / 2 : 1;
  float tail[kT][kTailAcc];  // tokens kTok .. kTok + kTail - 1, laid out as acc's first kTail tokens
  zero_accumulators<kTok, kTail, kT, kTailAcc>(acc, tail);

  // Stage 0's X descriptor; stage s, k16 step i: + s kStageBytes / 16 + 2 i (the address field's unit is
  // 16 bytes, and no address in shared memory carries out of it).
  const uint64_t desc0 = smem_desc_k_major_sw128(smem_addr(smem));
  uint32_t fr[kBuf][kT][2][4];
  uint2 mw[kT][2];                // the tile's multiplier words of the lane's rows
  uint32_t pk[kT][2];             // the next chunk's packed words
  bool big = false;               // mxfp4: the tile has a scale above 2
  UnpackedChunk u[kT];
  // The packed words of chunk h of the stage's tile.
  const auto load_chunk = [&](const uint8_t* ws, int h) {
#pragma unroll
    for (int t = 0; t < kT; ++t)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) pk[t][hi] = load_packed(ws + lane_w[hi], t, h);
  };
  // Waits for the tile in stage st (full barrier phase `parity`) and reads its multipliers, its flags and
  // chunk 0's packed words.
  const auto begin_tile = [&](int st, uint32_t parity) {
    mbar_wait(full + 8 * st, parity);
    const uint8_t* ws = smem + st * kStageBytes + S::kXBytes;
#pragma unroll
    for (int t = 0; t < kT; ++t)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi)
        mw[t][hi] = reinterpret_cast<const uint2*>(ws + S::kWBytes)[row0 + 64 * t + 8 * hi];
    if constexpr (!kNv) {
      const uint4 f = *reinterpret_cast<const uint4*>(flags + 4 * st);
      big = (f.x | f.y | f.z | f.w) != 0;
    }
    load_chunk(ws, 0);
  };
  int st = 0, prev_st = 0;  // tile kt's stage, tile kt - 1's
  uint32_t parity = 0;      // tile kt's full-barrier phase
  if constexpr (kPersistent) {
    st = ring->st;
    parity = ring->phase;
  }
  begin_tile(st, parity);
  if constexpr (kEarly)
#pragma unroll
    for (int t = 0; t < kT; ++t) unpack_chunk<kNv>(pk[t], mw[t], 0, u[t]);
  for (int kt = 0; kt < num_kt; ++kt) {
    const uint64_t desc = desc0 + uint64_t(st) * (kStageBytes >> 4);
    const int next_st = st + 1 == kStages ? 0 : st + 1;
    const uint32_t next_parity = next_st == 0 ? parity ^ 1 : parity;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int b = kBuf == 2 ? h : 0;  // a tile has two chunks: chunk h's buffer is h
      const bool more = h == 0 || kt + 1 < num_kt;
      if constexpr (kAhead)  // this chunk is unpacked already (kEarly): pk is free
        if (h == 0) load_chunk(smem + st * kStageBytes + S::kXBytes, 1);
#pragma unroll
      for (int t = 0; t < kT; ++t) {
        if constexpr (!kEarly) unpack_chunk<kNv>(pk[t], mw[t], h, u[t]);
        scale_chunk(u[t], fr[b][t]);
      }
      if constexpr (!kNv)  // (big and mw are this tile's: the next tile's are read after this chunk's wgmma)
        if (big)
#pragma unroll
          for (int t = 0; t < kT; ++t) rescale_big_rows(mw[t], h, fr[b][t]);
      wgmma_fence();  // the fragments written above are visible to the wgmma
#pragma unroll
      for (int t = 0; t < kT; ++t)
#pragma unroll
        for (int sub = 0; sub < 2; ++sub)  // k16 step 2h + sub: 32 bytes into each 128-byte X row
        {
          wgmma_rs<kTok>(acc[t], fr[b][t][sub], desc + 2 * (2 * h + sub));
          // The tail's token rows follow the kTok rows in the stage (kTok 128-byte rows further).
          if constexpr (kTail > 0) wgmma_rs<kTail>(tail[t], fr[b][t][sub], desc + 2 * (2 * h + sub) + kTok * 8);
        }
      wgmma_commit();
      // The next chunk's words (unless kAhead loaded them) and, kEarly, their unpacking, while this chunk's wgmma run.
      if constexpr (!kAhead) {
        if (h == 0) load_chunk(smem + st * kStageBytes + S::kXBytes, 1);
        else if (more) begin_tile(next_st, next_parity);
      } else if (h == 1 && more) {
        begin_tile(next_st, next_parity);
      }
      if constexpr (kEarly)
        if (more)
#pragma unroll
          for (int t = 0; t < kT; ++t) unpack_chunk<kNv>(pk[t], mw[t], h ^ 1, u[t]);
      // The chunk that last used the buffer scaled next is done (two buffers: the previous chunk, at
      // h = 0 the previous tile's chunk 1; one: this chunk). Pins that buffer to its registers up to
      // here: the compiler may not reuse them while the wgmma read them.
      wgmma_wait<kBuf - 1>();
      fence_fragments(fr[kBuf == 2 ? h ^ 1 : 0]);
      if (h == 0 && kt > 0) mbar_arrive(empty + 8 * prev_st);  // tile kt - 1 is done
    }
    prev_st = st;
    st = next_st;
    parity = next_parity;
  }
  // The epilogue's factors, loaded while the last wgmma run.
  const float gs = kNv ? g.w_global[e] * kNvEpilogueFactor : 1.0f;  // exact: a power of two
  float bias[kT][2];
  if constexpr (kAct) load_row_bias<kT>(g, e, row0, [&](int b) { return gated_block_row(g, n0, b); }, bias);
  else load_row_bias<kT>(g, e, n0, row0, bias);
  drain_accumulators<kTok, kTail, kT, kTailAcc>(acc, tail);
  fence_fragments(fr[kBuf - 1]);
  if constexpr (kPersistent) {
    ring->st = st;
    ring->phase = parity;
    mbar_arrive(empty + 8 * prev_st);  // the last tile's stage goes back to the producer
    if constexpr (kAct)
      store_gated_tiles<kTok, kTail, kT, kTailAcc, 2 * kPersistentEpiTokens>(g, acc, tail, bias, gs, epi,
                                                                             n0 / 2 + 32 * kT * wg, rows, first_row);
    else
      store_tiles<kTok, kTail, kT, kTailAcc, kPersistentEpiTokens>(g, acc, tail, bias, gs, epi, n0 + 64 * kT * wg,
                                                                  rows, first_row);
  } else {
    pdl_launch_dependents();
    consumers_bar();  // both consumers are done with the stages (and every copy into them has landed)
    store_tiles<kTok, kTail, kT, kTailAcc>(g, acc, tail, bias, gs, smem + wg * kEpiBytes, n0 + 64 * kT * wg, rows,
                                          first_row);
  }
}

// One block's item: weight rows n0 .. n0 + 128 kT - 1 of expert e against the item's `rows` token
// rows (src_rows: their rows of X, -1 past them).
template <bool kNv, int kTok, int kT, int kTail = 0>
__device__ __forceinline__ void fp4_wgmma_item(const SmallMGemm& g, uint8_t* smem, uint32_t full, uint32_t empty,
                                               uint32_t* flags, const int32_t* src_rows, int e, int64_t n0,
                                               int64_t rows, int64_t first_row) {
  if (threadIdx.x >= 128 * kConsumers) {
    setmaxnreg_dec<kProducerRegs>();
    produce<kNv, kTok, kT, kTail>(g, smem, full, empty, flags, src_rows, e, n0);
  } else {
    setmaxnreg_inc<kConsumerRegs>();
    consume<kNv, kTok, kT, kTail>(g, smem, full, empty, flags, e, n0, rows, first_row);
  }
}

template <bool kNv>
__global__ void __launch_bounds__(kThreads, 1) fp4_wgmma_kernel(SmallMGemm g, RowPlan plan) {
  extern __shared__ uint8_t smem_raw[];
  // 1024-byte aligned (the swizzled X tiles); an offset into smem_raw, so that the compiler knows every
  // pointer below addresses shared memory (generic loads took long-scoreboard stalls).
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  uint32_t* flags = reinterpret_cast<uint32_t*>(empty + kStages);  // [kStages][4]
  int32_t* src_rows = reinterpret_cast<int32_t*>(flags + 4 * kStages);
  pdl_wait();
  // A block row per item.
  const auto [e, first, rows] = item_rows(plan.items[blockIdx.y], kTileTokens, kTailTokens);
  if (rows == 0) return;
  // Block x covers weight rows from 128 T x: items of fewer rows take fewer, taller blocks.
  const int tiles = rows > 128 ? 1 : rows > 64 ? 2 : 4;
  const int64_t n0 = int64_t(blockIdx.x) * kSlabRows * tiles;
  if (n0 >= g.N) return;
  for (int t = threadIdx.x; t < kBlockTokens; t += kThreads)
    src_rows[t] = t < rows ? (g.x_row ? g.x_row[first + t] : static_cast<int32_t>(first + t)) : -1;
  if (threadIdx.x < kStages) {
    mbar_init(&full[threadIdx.x], 128);                // each producer thread, once its part is complete
    mbar_init(&empty[threadIdx.x], 128 * kConsumers);  // each consumer thread, after its reads
  }
  __syncthreads();
  const uint32_t full_a = smem_addr(full), empty_a = smem_addr(empty);
  if (rows > kTileTokens)
    fp4_wgmma_item<kNv, kTileTokens, 1, kTailTokens>(g, smem, full_a, empty_a, flags, src_rows, e, n0, rows, first);
  else if (tiles == 1) fp4_wgmma_item<kNv, 256, 1>(g, smem, full_a, empty_a, flags, src_rows, e, n0, rows, first);
  else if (tiles == 2) fp4_wgmma_item<kNv, 128, 2>(g, smem, full_a, empty_a, flags, src_rows, e, n0, rows, first);
  else if (rows <= 32) fp4_wgmma_item<kNv, 32, 4>(g, smem, full_a, empty_a, flags, src_rows, e, n0, rows, first);
  else fp4_wgmma_item<kNv, 64, 4>(g, smem, full_a, empty_a, flags, src_rows, e, n0, rows, first);
}

// The persistent kernel's unit of work: weight rows n0 .. n0 + 127 of expert e against a plan item's `rows` token
// rows, plan rows first on; rows = 0: no more units. ItemUnit (GEMM2 beside GEMM1, WgmmaOverlap): and the plan item.
struct Unit {
  int e, first, rows, n0;
};
struct ItemUnit : Unit {
  int item;
};

// The producer leader's claim: units u = item * n_slabs + slab (n_slabs: N / 128 rounded up) from the counter
// (work[0]: plan.work_counters[0], or [3] for GEMM2 beside GEMM1) until one has work; rows = 0 once they run out.
// Units with none: an item that rides as its predecessor's tail and (from the first, since items past the last hold
// expert -1) every unit past the last item.
// Unit order: an item's slabs one after another, so that the units running at once share their X rows (as the
// one-unit kernel's grid orders its blocks).
template <class U>
__device__ inline U claim_unit(const RowPlan& plan, int* work, int n_slabs, int units) {
  for (;;) {
    const int u = atomicAdd(&work[0], 1);
    if (u >= units) return {};
    const int item = u / n_slabs, slab = u - item * n_slabs;
    const PlanItem it = plan.items[item];
    if (it.expert < 0) return {};
    const auto [e, first, rows] = item_rows(it, kTileTokens, kTailTokens);
    const Unit unit{e, static_cast<int>(first), static_cast<int>(rows), slab * kSlabRows};
    if constexpr (std::is_same_v<U, ItemUnit>) {
      if (rows > 0) return {unit, item};
    } else {
      if (rows > 0) return unit;
    }
  }
}

// GEMM2 beside GEMM1 (kOverlap, GEMM1): the producer's leader adds a unit's h2 columns (128 weight rows, gated: 64
// columns, none past N) to its item's count once the consumers have arrived on the unit's `taken` barrier after their
// stores (an mbarrier arrival releases, the leader's wait acquires, at the block's scope; add_release then makes the
// stores visible to GEMM2). The consumers' code stays that of the instance without it (a count by each
// consumer warpgroup after its stores cost it 32 bytes of stack and a longer main loop).
__device__ inline void signal_unit(const SmallMGemm& g, const RowPlan& plan, const ItemUnit& unit) {
  const int64_t rows = g.N - unit.n0;
  const int cols = static_cast<int>(rows < kSlabRows ? rows : kSlabRows) / 2;
  add_release(plan.work_counters + kPlanCounterInts + unit.item, cols);
}

// The producer warpgroup's named barrier (0: __syncthreads, 1-3: the consumers', wgmma_pipeline.cuh).
__device__ inline void producers_bar() { asm volatile("bar.sync 4, 128;\n" ::: "memory"); }

// Calls f with a persistent unit's token tile and tail (integral constants): 256 + 32 for an item with a tail, else
// 256 (an item of up to 128 rows too: with the one-unit kernel's other shapes in the consumers' unit loop, ptxas ran
// out of registers for them and serialized their wgmma, C7512).
template <class F>
__device__ __forceinline__ void with_persistent_shape(int rows, F&& f) {
  if (rows > kTileTokens) f(std::integral_constant<int, kTileTokens>{}, std::integral_constant<int, kTailTokens>{});
  else f(std::integral_constant<int, kTileTokens>{}, std::integral_constant<int, 0>{});
}

// Persistent, one block per SM: the producer's leader claims units (claim_unit) and passes each to the other
// producer threads under producers_bar and to the consumers through a two-slot queue (ClaimQueue: slot n % 2 for the
// block's n-th claim, `posted` once written, `taken` once every consumer thread has run the unit; the consumers read
// the claim where it lies: their main loop has no registers left to hold it, and with one arrival per warp after
// __syncwarp racecheck reported the slot's next write racing with the other lanes' reads). The leader claims the next
// unit as soon as a unit's copies are issued, so the ring fills with it while the consumers store the last; it waits
// for claim n - 2's unit to be done, long past by then. The block to count itself done last (work_counters[1]) sets
// both counters back to 0 for the next launch.
// kAct: GEMM1 with the activation in its epilogue (SmallMGemm::act_epilogue; gated_block_row, store_gated_tiles).
// kOverlap: GEMM2 beside GEMM1 (WgmmaOverlap, wgmma_pipeline.cuh): with kAct GEMM1 lets GEMM2 start after its
// pdl_wait and its producer's leader counts each item's h2 columns as the consumers finish its units (signal_unit);
// with kTmaX GEMM2's leader waits for its claimed item's count (await_item) before it posts the unit, claims from
// work_counters[3, 4] and waits for GEMM1's grid before it ends.
template <bool kNv, bool kAct, bool kTmaX, bool kOverlap = false>
__global__ void __launch_bounds__(kThreads, 1)
    fp4_wgmma_persistent_kernel(SmallMGemm g, RowPlan plan, const __grid_constant__ CUtensorMap x_map) {
  static_assert(!kOverlap || kAct != kTmaX, "beside each other: GEMM1 with the activation, GEMM2 reading h2 by TMA");
  constexpr bool kSignal = kOverlap && kAct, kAwait = kOverlap && kTmaX;
  using U = std::conditional_t<kOverlap, ItemUnit, Unit>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  uint8_t* epi = smem + kStages * kStageBytes;
  uint64_t* full = reinterpret_cast<uint64_t*>(epi + kConsumers * kPersistentEpiBytes);
  uint64_t* empty = full + kStages;
  uint32_t* flags = reinterpret_cast<uint32_t*>(empty + kStages);  // [kStages][4]
  auto& queue = *reinterpret_cast<ClaimQueue<U>*>(flags + 4 * kStages);
  static_assert(sizeof(ClaimQueue<U>) <= kQueueBytes);
  const int n_slabs = static_cast<int>((g.N + kSlabRows - 1) / kSlabRows), units = n_slabs * plan.item_grid;
  if (threadIdx.x < kStages) {
    mbar_init(&full[threadIdx.x], 128);                // each producer thread, once its part is complete
    mbar_init(&empty[threadIdx.x], 128 * kConsumers);  // each consumer thread, after its reads
  }
  if (threadIdx.x < 2) {
    mbar_init(&queue.posted[threadIdx.x], 1);                // the producer's leader, once it has written the claim
    mbar_init(&queue.taken[threadIdx.x], 128 * kConsumers);  // each consumer thread, once its unit is done
  }
  __syncthreads();
  if constexpr (!kAwait) pdl_wait();
  if constexpr (kSignal) pdl_launch_dependents();  // GEMM2 may take the SMs this grid's blocks leave
  int* const work = plan.work_counters + (kAwait ? kSecondGemmCounters : 0);
  const uint32_t full_a = smem_addr(full), empty_a = smem_addr(empty);
  Ring<kStages> ring;
  if (threadIdx.x >= 128 * kConsumers) {
    setmaxnreg_dec<kPersistentProducerRegs>();
    const bool leader = threadIdx.x == 128 * kConsumers;
    int n = 0;
    for (;; ++n) {
      const int slot = n & 1;
      if (leader) {
        const U claim = claim_unit<U>(plan, work, n_slabs, units);
        if constexpr (kAwait)  // the leader issues the X boxes (produce): after its acquire and proxy fence
          if (claim.rows > 0) await_item(plan.work_counters + kPlanCounterInts + claim.item, g.K);
        if (n >= 2) {
          mbar_wait(smem_addr(&queue.taken[slot]), ((n >> 1) - 1) & 1);  // claim n - 2's unit is done
          if constexpr (kSignal) signal_unit(g, plan, queue.unit[slot]);
        }
        queue.unit[slot] = claim;
        mbar_arrive(smem_addr(&queue.posted[slot]));
      }
      producers_bar();  // (slot n is written again at claim n + 2, after every producer thread has passed n + 1's)
      const Unit w = queue.unit[slot];
      if (w.rows == 0) break;
      with_persistent_shape(w.rows, [&](auto tok, auto tail) {
        produce<kNv, decltype(tok)::value, 1, decltype(tail)::value, true, kAct, kTmaX>(
            g, smem, full_a, empty_a, flags, nullptr, w.e, w.n0, w.rows, w.first, &ring, &x_map);
      });
    }
    if (leader) {
      if constexpr (kSignal)
        if (n >= 1) {  // the last unit (claim n is the one with none)
          mbar_wait(smem_addr(&queue.taken[(n - 1) & 1]), ((n - 1) >> 1) & 1);
          signal_unit(g, plan, queue.unit[(n - 1) & 1]);
        }
      reset_claim_counters(work, static_cast<int>(gridDim.x));
    }
  } else {
    setmaxnreg_inc<kPersistentConsumerRegs>();
    uint8_t* my_epi = epi + (threadIdx.x >> 7) * kPersistentEpiBytes;
    for (int n = 0;; ++n) {
      const int slot = n & 1;
      mbar_wait(smem_addr(&queue.posted[slot]), (n >> 1) & 1);
      const U& unit = queue.unit[slot];
      if (unit.rows == 0) break;
      with_persistent_shape(unit.rows, [&](auto tok, auto tail) {
        consume<kNv, decltype(tok)::value, 1, decltype(tail)::value, true, kAct>(g, smem, full_a, empty_a, flags,
                                                                                unit.e, unit.n0, unit.rows, unit.first,
                                                                                my_epi, &ring);
      });
      mbar_arrive(smem_addr(&queue.taken[slot]));  // this thread is done with the claim
    }
  }
  if constexpr (kAwait) pdl_wait();  // GEMM1's grid has completed (signal_unit)
  pdl_launch_dependents();  // every thread: the dependent launch waits for all of them (or their exit)
}

// The persistent kernel's blocks the current device holds at once (one per SM), asked once per device and kernel
// (whose shared-memory limit it raises first).
template <bool kNv, bool kAct, bool kTmaX, bool kOverlap>
int resident_blocks() {
  static std::atomic<int> known[kMaxDevices] = {};
  return once_per_device(known, "the persistent fp4 wgmma GEMM", [](int device) {
    int sms = 0, per_sm = 0;
    FMOE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const auto kernel = fp4_wgmma_persistent_kernel<kNv, kAct, kTmaX, kOverlap>;
    FMOE_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kPersistentSmemBytes)));
    FMOE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, kPersistentSmemBytes));
    return sms * per_sm;
  });
}

}  // namespace

void launch_fp4_wgmma_gemm(const SmallMGemm& g, const RowPlan& plan, cudaStream_t s, WgmmaOverlap overlap) {
  const int64_t max_items = plan.item_grid;
  if (max_items == 0) return;
  FMOE_CHECK(g.K % kTileK == 0, "the fp4 wgmma GEMM needs K % ", kTileK, " == 0, got K=", g.K);
  FMOE_CHECK(plan.items && plan.item_rows == kTileTokens, "the fp4 wgmma GEMM needs a plan with work items of ",
             kTileTokens, " rows, got item_rows=", plan.item_rows);
  FMOE_CHECK(g.N % 8 == 0, "the fp4 wgmma GEMM needs N % 8 == 0 (16-byte output stores), got N=", g.N);
  FMOE_CHECK(reinterpret_cast<uintptr_t>(g.y) % 16 == 0, "the fp4 wgmma GEMM needs a 16-byte aligned y");
  FMOE_CHECK(!g.act_epilogue || (g.persistent && is_sigmoid_gated(g.act.kind) && g.N % 16 == 0),
             "the fp4 wgmma GEMM1 has the activation epilogue in its persistent kernel, for silu_mul and swiglu_oai "
             "with I % 8 == 0, got ", g.persistent ? "" : "the one-unit kernel, ", activation_name(g.act.kind),
             " and N=", g.N);
  if (g.persistent) {
    FMOE_CHECK(plan.work_counters, "the persistent fp4 wgmma GEMM needs the plan's work counters");
    FMOE_CHECK(g.N < (int64_t(1) << 31), "the persistent fp4 wgmma GEMM addresses weight rows in 32 bits, got N=", g.N);
    const int64_t units = (g.N + kSlabRows - 1) / kSlabRows * max_items;
    FMOE_CHECK(units + 1024 < (int64_t(1) << 31), "the persistent fp4 wgmma GEMM takes fewer than 2^31 units, got ",
               units);
    // X in plan order (x_row null, x_rows known; GEMM2): the producer loads it by TMA. GEMM1 (kAct) gathers.
    const bool tma_x = !g.x_row && g.x_rows > 0 && !g.act_epilogue;
    if (tma_x)
      FMOE_CHECK(g.x_rows + kBlockTokens < (int64_t(1) << 31), "the persistent fp4 wgmma GEMM addresses x rows with ",
                 "32-bit TMA coordinates, got x_rows=", g.x_rows);
    FMOE_CHECK(overlap != WgmmaOverlap::signal || g.act_epilogue, "the persistent fp4 wgmma GEMM signals its items' h2 "
               "(WgmmaOverlap) only as GEMM1 with the activation epilogue");
    FMOE_CHECK(overlap != WgmmaOverlap::await || tma_x, "the persistent fp4 wgmma GEMM awaits its items' h2 "
               "(WgmmaOverlap) only as GEMM2, reading h2 in plan order (x_row null, x_rows set)");
    const CUtensorMap x_map = tma_x ? rows_map(g.x, g.x_rows, g.K, false, 32) : CUtensorMap{};
    const auto go = [&](auto nv, auto act, auto tma, auto ov) {
      constexpr bool kNv = decltype(nv)::value, kAct = decltype(act)::value, kTmaX = decltype(tma)::value;
      constexpr bool kOverlap = decltype(ov)::value;
      const auto blocks =
          static_cast<unsigned>(std::min<int64_t>(units, resident_blocks<kNv, kAct, kTmaX, kOverlap>()));
      launch_with_smem(fp4_wgmma_persistent_kernel<kNv, kAct, kTmaX, kOverlap>, dim3(blocks), dim3(kThreads),
                       kPersistentSmemBytes, s, g, plan, x_map);
    };
    using On = std::true_type;
    using Off = std::false_type;
    const bool nv = g.weights == SmallMWeights::nvfp4;
    if (overlap != WgmmaOverlap::none) {
      if (nv && g.act_epilogue) go(On{}, On{}, Off{}, On{});
      else if (nv) go(On{}, Off{}, On{}, On{});
      else if (g.act_epilogue) go(Off{}, On{}, Off{}, On{});
      else go(Off{}, Off{}, On{}, On{});
      return;
    }
    if (nv && g.act_epilogue) go(On{}, On{}, Off{}, Off{});
    else if (nv && tma_x) go(On{}, Off{}, On{}, Off{});
    else if (nv) go(On{}, Off{}, Off{}, Off{});
    else if (g.act_epilogue) go(Off{}, On{}, Off{}, Off{});
    else if (tma_x) go(Off{}, Off{}, On{}, Off{});
    else go(Off{}, Off{}, Off{}, Off{});
    return;
  }
  FMOE_CHECK(overlap == WgmmaOverlap::none, "the fp4 wgmma GEMMs run beside each other (WgmmaOverlap) in the "
             "persistent kernel alone");
  FMOE_CHECK(max_items <= 65535, "the fp4 wgmma GEMM takes at most 65535 work items, got ", max_items);
  const auto go = [&](auto kernel) {
    FMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)));
    const dim3 grid(static_cast<unsigned>((g.N + kSlabRows - 1) / kSlabRows), static_cast<unsigned>(max_items));
    launch_with_smem(kernel, grid, dim3(kThreads), kSmemBytes, s, g, plan);
  };
  if (g.weights == SmallMWeights::nvfp4) go(fp4_wgmma_kernel<true>);
  else go(fp4_wgmma_kernel<false>);
}

}  // namespace fusedmoe::cuda
