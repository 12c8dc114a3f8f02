// Activation preparation kernels: fp8 quantization of the layer input — per 1x128 group (a half-warp
// per group, 8 values per lane; dynamic, or one static scale for fp8-tensor) or per row (a block per
// row; fp8-channel's dynamic per-token scale) —, the llama4 input weighting, and the gather of input
// rows into expert-grouped order for the grouped GEMMs.
// Every fp8 quantizer writes one f32 scale per 1x128 group, [rows, K/128], whatever the scheme's
// granularity (a per-tensor or per-row scale is repeated), so that every fp8 scheme feeds the same
// block-scaled GEMMs.
// Limits: K % 128 == 0 for the fp8 quantizers; rows are 16-byte aligned for the gather.
#include <algorithm>

#include "cuda/cuda_util.h"
#include "cuda/kernels/fp8_util.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kBlock = 256;

// A half-warp per 128-value group, 8 values (16 bytes) per lane. static_scale (fp8-tensor): the
// group's scale is *static_scale instead of its amax / 448. beside: launch_quantize_fp8_block's beside_previous
// (x and static_scale read from L2 before the wait, which comes last).
__global__ void quantize_fp8_block_kernel(const bf16* x, int64_t M, int64_t K, const float* row_weight,
                                          const float* static_scale, uint8_t* q, float* scales, bool beside) {
  const int64_t groups = K / 128;
  const int64_t item = (int64_t(blockIdx.x) * kBlock + threadIdx.x) >> 4;
  const int sub = threadIdx.x & 15;
  if (!beside) {
    pdl_wait();
    pdl_launch_dependents();
  }
  const bool live = item < M * groups;
  const int64_t row = live ? item / groups : 0, g = live ? item % groups : 0;
  const int64_t base = row * K + g * 128 + sub * 8;
  float f[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  float amax = 0.0f;
  if (live) {
    const uint4 raw = load_settled(reinterpret_cast<const uint4*>(x + base));
    const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      f[i] = __bfloat162float(v[i]);
      if (row_weight) f[i] = __bfloat162float(__float2bfloat16_rn(f[i] * row_weight[row]));
      amax = fmaxf(amax, fabsf(f[i]));
    }
  }
  const float dynamic = fp8_scale_from_amax(lanes_max<16>(amax));  // every lane takes part
  if (live) {
    const float scale = static_scale ? load_settled(static_scale) : dynamic;
    *reinterpret_cast<uint2*>(q + base) = pack_e4m3x8(f, scale);
    if (sub == 0) scales[row * groups + g] = scale;
  }
  if (beside) {
    pdl_wait();
    pdl_launch_dependents();
  }
}

// A block per row: the row's amax (8 values per thread step), then its values / (amax / 448) as e4m3,
// and the scale into each of the row's K/128 group slots (row-major [M, K/128]).
constexpr int kRowThreads = 256;

__global__ void __launch_bounds__(kRowThreads)
    quantize_fp8_rows_kernel(const bf16* x, int64_t K, const float* row_weight, uint8_t* q, float* scales,
                             bool beside) {
  const int64_t row = blockIdx.x;
  if (!beside) {
    pdl_wait();
    pdl_launch_dependents();
  }
  const bf16* src = x + row * K;
  const auto load8 = [&](int64_t c, float (&f)[8]) {
    const uint4 raw = load_settled(reinterpret_cast<const uint4*>(src + c));
    const bf16* v = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      f[i] = __bfloat162float(v[i]);
      if (row_weight) f[i] = __bfloat162float(__float2bfloat16_rn(f[i] * row_weight[row]));
    }
  };
  float amax = 0.0f;
  for (int64_t c = int64_t(threadIdx.x) * 8; c < K; c += kRowThreads * 8) {
    float f[8];
    load8(c, f);
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
  }
  __shared__ float warp_max[kRowThreads / 32];
  const float scale = fp8_scale_from_amax(block_max<kRowThreads>(amax, warp_max));
  for (int64_t c = int64_t(threadIdx.x) * 8; c < K; c += kRowThreads * 8) {
    float f[8];
    load8(c, f);
    *reinterpret_cast<uint2*>(q + row * K + c) = pack_e4m3x8(f, scale);
  }
  for (int64_t g = threadIdx.x; g < K / 128; g += kRowThreads) scales[row * (K / 128) + g] = scale;
  if (beside) {
    pdl_wait();
    pdl_launch_dependents();
  }
}

__global__ void scale_rows_kernel(const bf16* x, int64_t M, int64_t K, const float* row_weight, bf16* out) {
  const int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  if (i >= M * K) return;
  out[i] = __float2bfloat16_rn(__bfloat162float(x[i]) * row_weight[i / K]);
}

// A warp per planned row, 8 rows per block: the row's plan entries read together, then 16-byte
// pieces, 8 per lane loaded before any is stored (fp8: the scales by the first blocks, put_scales_by_row).
// (A block of 128 threads per row, one piece in flight per thread after three dependent plan reads, took 118 us
// at 72% of DRAM peak for qwen3-30b-a3b at 8192 tokens; this one 109 us at 77%. ncu, H200.) For plans without
// slot_rows (the batched format's); gather_tokens_kernel below for the others.
constexpr int kGatherWarps = 8;
constexpr int kGatherPieces = 8;
// The token gather's smallest grid: a decode batch's rows go out in slices over about this many blocks.
constexpr int64_t kGatherMinBlocks = 128;

// A lane's share of a row in flight: its 16-byte pieces i0, i0 + 32, .. (kGatherPieces of them, those below n),
// all loaded before any is stored.
struct RowPieces {
  uint4 v[kGatherPieces];
  __device__ void load(const uint4* row, int64_t i0, int64_t n) {
#pragma unroll
    for (int u = 0; u < kGatherPieces; ++u)
      if (i0 + u * 32 < n) v[u] = __ldg(row + i0 + u * 32);
  }
  __device__ void store(uint4* row, int64_t i0, int64_t n) const {
#pragma unroll
    for (int u = 0; u < kGatherPieces; ++u)
      if (i0 + u * 32 < n) row[i0 + u * 32] = v[u];
  }
};

// Where row r's scale of group g goes in dst_scales: base + g * stride. M-major [G, scale_rows] when scale_rows > 0,
// else grouped M-major (expert e's rows' group g at offsets[e] G + g counts[e] + (r - offsets[e])).
struct ScalePlace {
  int64_t base, stride;
};
__device__ inline ScalePlace row_scale_place(const RowPlan& plan, int64_t r, int64_t G, int64_t scale_rows) {
  if (scale_rows > 0) return {r, scale_rows};
  const int e = plan.row_expert[r];
  const int64_t off = plan.offsets[e];
  return {off * G + r - off, plan.counts[e]};
}

// Planned row r's scales (a lane's row; none past the plan's rows or max_rows, none for a batched plan's unused rows)
// from its token's [G] into dst_scales. Lanes take consecutive rows, which lie side by side in either layout while
// they belong to one expert, so each of a warp's G stores writes one or two runs of consecutive floats (a warp
// storing one row's scales, strided by the expert's rows, touches 32 sectors a store); the loads gather from the
// token-major source, which L2 holds. Both gathers run it in their first scale_blocks blocks.
__device__ inline void put_scales_by_row(const float* src_scales, int64_t G, const RowPlan& plan, int num_local,
                                         int64_t max_rows, int64_t r, float* dst_scales, int64_t scale_rows) {
  if (r >= max_rows || r >= plan.offsets[num_local] || plan.row_expert[r] < 0) return;
  const float* from = src_scales + int64_t(plan.row_token[r]) * G;
  const auto [base, stride] = row_scale_place(plan, r, G, scale_rows);
#pragma unroll 8
  for (int64_t g = 0; g < G; ++g) dst_scales[base + g * stride] = __ldg(from + g);
}

// The blocks of a gather that write the scales: a lane per planned row (put_scales_by_row).
int64_t scale_blocks_of(int64_t max_rows, const float* dst_scales) {
  return dst_scales ? (max_rows + 32 * kGatherWarps - 1) / (32 * kGatherWarps) : 0;
}

__global__ void __launch_bounds__(kGatherWarps * 32)
    gather_rows_kernel(const uint8_t* src, int64_t row_bytes, const float* src_scales, int64_t G, RowPlan plan,
                       int num_local, int64_t max_rows, uint8_t* dst, float* dst_scales, int64_t scale_rows,
                       int scale_blocks) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  pdl_wait();
  pdl_launch_dependents();
  if (int(blockIdx.x) < scale_blocks) {
    put_scales_by_row(src_scales, G, plan, num_local, max_rows,
                      (int64_t(blockIdx.x) * kGatherWarps + warp) * 32 + lane, dst_scales, scale_rows);
    return;
  }
  const int64_t r = int64_t(blockIdx.x - scale_blocks) * kGatherWarps + warp;
  if (r >= max_rows || r >= plan.offsets[num_local]) return;
  const int e = plan.row_expert[r];
  const int64_t token = plan.row_token[r];
  if (e < 0) return;  // an unused row of a batched plan
  const uint4* s = reinterpret_cast<const uint4*>(src + token * row_bytes);
  uint4* d = reinterpret_cast<uint4*>(dst + r * row_bytes);
  const int64_t n = row_bytes / 16;
  for (int64_t i0 = lane; i0 < n; i0 += 32 * kGatherPieces) {
    RowPieces p;
    p.load(s, i0, n);
    p.store(d, i0, n);
  }
}

// A warp per token and slice of its row (plans with slot_rows): the slice read once, kGatherPieces 16-byte pieces
// per lane at a time, and stored into each of the token's top_k planned rows (slot_rows; -1: none), instead of each
// planned row reading its token's row again. A decode batch splits its rows into blockIdx.y column slices of `slice`
// pieces over about kGatherMinBlocks blocks (launch_gather_rows): with a warp per whole row its one or two blocks
// stored every planned row through one or two SMs (deepseek-v3 at 4 / 16 tokens: 9.7 / 10.3 -> 3.7 / 5.8 us,
// 1.009-1.013x the step; H200, session 45). The token's slots (a lane each) are read with its row's pieces, before any
// store. fp8: the first scale_blocks blocks (of blockIdx.y 0) write the scales, in the order of the rows
// (put_scales_by_row): when the token warps stored their rows' scales too, strided by the expert's rows, deepseek-v3's
// gather took 32.0 / 218.4 us at 1024 / 8192 tokens, with this pass 23.4 / 157.5 (kernel timelines, H200, session 62;
// the forward 1.003 / 1.011x, inside its rounds' spread).
__global__ void __launch_bounds__(kGatherWarps * 32)
    gather_tokens_kernel(const uint8_t* src, int64_t row_bytes, const float* src_scales, int64_t G, RowPlan plan,
                         int num_local, int64_t tokens, int top_k, int64_t slice, uint8_t* dst, float* dst_scales,
                         int64_t scale_rows, int scale_blocks) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  pdl_wait();
  pdl_launch_dependents();
  if (int(blockIdx.x) < scale_blocks) {
    if (blockIdx.y == 0)
      put_scales_by_row(src_scales, G, plan, num_local, tokens * top_k,
                        (int64_t(blockIdx.x) * kGatherWarps + warp) * 32 + lane, dst_scales, scale_rows);
    return;
  }
  const int64_t t = int64_t(blockIdx.x - scale_blocks) * kGatherWarps + warp;
  if (t >= tokens) return;
  const uint4* s = reinterpret_cast<const uint4*>(src + t * row_bytes);
  const int64_t begin = int64_t(blockIdx.y) * slice, end = min(row_bytes / 16, begin + slice);
  const int my_slot = lane < top_k ? plan.slot_rows[t * top_k + lane] : -1;  // top_k <= 32 (host-checked)
  for (int64_t b0 = begin; b0 < end; b0 += 32 * kGatherPieces) {  // (warp-uniform: the shuffles)
    RowPieces p;
    p.load(s, b0 + lane, end);
    for (int j = 0; j < top_k; ++j)
      if (const int64_t r = __shfl_sync(~0u, my_slot, j); r >= 0)
        p.store(reinterpret_cast<uint4*>(dst + r * row_bytes), b0 + lane, end);
  }
}

// A quantizer beside the router (beside_previous) cannot read the router weight: it is the router's output.
void check_beside_router(bool beside_previous, const float* row_weight, const char* what) {
  FMOE_CHECK(!beside_previous || !row_weight, what, ": the router weight is the router's output; a quantizer beside ",
             "the router cannot read it");
}

}  // namespace

void launch_quantize_fp8_block(const bf16* x, int64_t M, int64_t K, const float* row_weight,
                               const float* static_scale, fp8* q, float* scales, cudaStream_t s,
                               bool beside_previous) {
  check_beside_router(beside_previous, row_weight, "launch_quantize_fp8_block");
  const int64_t threads = M * (K / 128) * 16;
  if (threads == 0) return;
  launch(quantize_fp8_block_kernel, dim3(static_cast<unsigned>((threads + kBlock - 1) / kBlock)), dim3(kBlock), s, x, M,
         K, row_weight, static_scale, reinterpret_cast<uint8_t*>(q), scales, beside_previous);
}

void launch_quantize_fp8_rows(const bf16* x, int64_t M, int64_t K, const float* row_weight, fp8* q, float* scales,
                              cudaStream_t s, bool beside_previous) {
  check_beside_router(beside_previous, row_weight, "launch_quantize_fp8_rows");
  if (M == 0) return;
  launch(quantize_fp8_rows_kernel, dim3(static_cast<unsigned>(M)), dim3(kRowThreads), s, x, K, row_weight,
         reinterpret_cast<uint8_t*>(q), scales, beside_previous);
}

void launch_scale_rows(const bf16* x, int64_t M, int64_t K, const float* row_weight, bf16* out, cudaStream_t s) {
  if (M * K == 0) return;
  launch(scale_rows_kernel, dim3(static_cast<unsigned>((M * K + kBlock - 1) / kBlock)), dim3(kBlock), s, x, M, K,
         row_weight, out);
}

void launch_gather_rows(const void* src, int64_t row_bytes, const float* src_scales, int64_t G, const RowPlan& plan,
                        int num_local, int64_t max_rows, int top_k, void* dst, float* dst_scales, cudaStream_t s,
                        int64_t scale_rows) {
  if (max_rows == 0) return;
  const auto from = static_cast<const uint8_t*>(src);
  const auto to = static_cast<uint8_t*>(dst);
  if (plan.slot_rows && top_k > 0) {
    FMOE_CHECK(top_k <= 32, "the token gather reads a token's slots a lane each: top_k <= 32, got ", top_k);
    const int64_t tokens = max_rows / top_k, token_blocks = (tokens + kGatherWarps - 1) / kGatherWarps;
    // Slices of whole 32-piece spans (a lane's 16 bytes each), as many as bring the grid to kGatherMinBlocks.
    const int64_t spans = (row_bytes / 16 + 31) / 32;
    const int64_t slices = std::clamp<int64_t>((kGatherMinBlocks + token_blocks - 1) / token_blocks, 1, spans);
    const int64_t slice = (spans + slices - 1) / slices * 32;
    const int64_t scale_blocks = scale_blocks_of(max_rows, dst_scales);
    launch(gather_tokens_kernel,
           dim3(static_cast<unsigned>(scale_blocks + token_blocks), static_cast<unsigned>(slices)),
           dim3(kGatherWarps * 32), s, from, row_bytes, src_scales, G, plan, num_local, tokens, top_k, slice, to,
           dst_scales, scale_rows, static_cast<int>(scale_blocks));
    return;
  }
  const int64_t scale_blocks = scale_blocks_of(max_rows, dst_scales);
  launch(gather_rows_kernel, dim3(static_cast<unsigned>(scale_blocks + (max_rows + kGatherWarps - 1) / kGatherWarps)),
         dim3(kGatherWarps * 32), s, from, row_bytes, src_scales, G, plan, num_local, max_rows, to, dst_scales,
         scale_rows, static_cast<int>(scale_blocks));
}

}  // namespace fusedmoe::cuda
