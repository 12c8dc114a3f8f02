// Expert-parallel dispatch and combine kernels (the device half of the CUDA EP PrepareFinalize;
// the exchanges themselves are NCCL collectives between these launches).
//
// Slabs: what a rank sends to one destination is a slab of T fixed-size records (T =
// max_tokens_per_rank) followed by a 16-byte header holding the number of records used, so
// every exchange has a size known on the host and the counts travel on the device with the
// data: no host synchronisation. A record is one token: its activation row, its f32 1x128
// scales (fp8), its top-k ids (global) and weights, each section 16-byte aligned (EpRecord).
//  - ep_plan (one 1024-thread block): the slot of each token in each destination's slab
//    (pos [M, D], -1 when the token does not go there) and the slab counts, by block scans in
//    token order over a per-token mask of destinations (each token's ids and owners read
//    once). With owner == null there is one destination taking every token in order (the
//    all-gather form).
//  - ep_pack (a block per token): copies the token's record into its slabs; writes headers.
//  - ep_unpack (a block per received record slot): splits the received slabs [n, slab] into
//    the experts' inputs [n*T, ...]; unused slots get ids -1 (no expert row) and weight 0. The
//    all-to-all keeps a rank's own slab out of NCCL: that source is read from the send buffer.
//  - ep_combine (a block per token and 1024 columns): out[t] = bf16(sum over destinations d
//    in order of partial[d * T + pos[t, d]]), f32 sums of f32 or bf16 partials, so the result
//    does not depend on timing. The rank's own block (never sent) is read where it was written.
//  - bf16 <-> f32 casts around the monolithic form's f32 reduce-scatter.
// Limits: row bytes, K % 8 == 0 (16-byte copies, 8 columns per step).
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/topk_sum.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kPlanThreads = 1024;
constexpr int kMaxDestinations = 128;
constexpr int kCopyThreads = 128;
constexpr int kCombineColumns = kCopyThreads * 8;  // per ep_combine block

// Whether token t goes to each destination, as a 128-bit mask (D <= kMaxDestinations): the ids of
// 8 slots are loaded, then their owners, before any is tested (two memory round trips per 8 slots).
__device__ inline void destinations_of(const int32_t* ids, int top_k, int num_experts, const int32_t* owner,
                                       uint64_t (&mask)[2]) {
  mask[0] = mask[1] = 0;
  for (int j0 = 0; j0 < top_k; j0 += 8) {
    int32_t id[8], own[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      id[u] = j0 + u < top_k ? ids[j0 + u] : -1;
      if (id[u] >= num_experts) id[u] = -1;
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) own[u] = id[u] >= 0 ? owner[id[u]] : -1;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (own[u] >= 0) mask[own[u] >> 6] |= uint64_t(1) << (own[u] & 63);
  }
}

__global__ void __launch_bounds__(kPlanThreads) ep_plan_kernel(const int32_t* ids, int64_t M, int top_k,
                                                               int num_experts, const int32_t* owner, int D,
                                                               int32_t* pos, int32_t* counts) {
  using Scan = cub::BlockScan<int, kPlanThreads>;
  __shared__ typename Scan::TempStorage storage;
  __shared__ int base[kMaxDestinations];  // records placed so far in each destination's slab
  pdl_wait();
  pdl_launch_dependents();
  if (threadIdx.x < D) base[threadIdx.x] = 0;
  __syncthreads();
  for (int64_t t0 = 0; t0 < M; t0 += kPlanThreads) {
    const int64_t t = t0 + threadIdx.x;
    uint64_t mask[2] = {~uint64_t(0), ~uint64_t(0)};  // no owner: every token goes to the one destination
    if (t < M && owner) destinations_of(ids + t * top_k, top_k, num_experts, owner, mask);
    for (int d = 0; d < D; ++d) {
      const int flag = t < M && ((d < 64 ? mask[0] >> d : mask[1] >> (d - 64)) & 1u);
      int prefix = 0, total = 0;
      Scan(storage).ExclusiveSum(flag, prefix, total);
      if (t < M) pos[t * D + d] = flag ? base[d] + prefix : -1;
      __syncthreads();  // the scan storage is reused; base[d] is read before it grows
      if (threadIdx.x == 0) base[d] += total;
    }
  }
  __syncthreads();
  if (threadIdx.x < D) counts[threadIdx.x] = base[threadIdx.x];
}

// Copies bytes (a multiple of 16) with the block, 4 loads per thread in flight before their stores.
__device__ inline void copy16(const uint8_t* src, uint8_t* dst, int64_t bytes) {
  constexpr int kU = 4;
  const int64_t step = int64_t(blockDim.x) * 16;
  for (int64_t i0 = int64_t(threadIdx.x) * 16; i0 < bytes; i0 += kU * step) {
    uint4 v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (i0 + u * step < bytes) v[u] = *reinterpret_cast<const uint4*>(src + i0 + u * step);
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (i0 + u * step < bytes) *reinterpret_cast<uint4*>(dst + i0 + u * step) = v[u];
  }
}

__global__ void __launch_bounds__(kCopyThreads) ep_pack_kernel(EpRecord rec, const uint8_t* rows, const float* scales,
                                                               const int32_t* ids, const float* weights, int64_t M,
                                                               int top_k, const int32_t* pos, const int32_t* counts,
                                                               int D, int64_t T, uint8_t* send) {
  const int64_t t = blockIdx.x;
  const int64_t slab = rec.slab_bytes(T);
  pdl_wait();
  pdl_launch_dependents();
  if (t == 0 && threadIdx.x < D)
    *reinterpret_cast<int32_t*>(send + threadIdx.x * slab + T * rec.bytes) = counts[threadIdx.x];
  if (t >= M) return;  // M == 0: one block writes the headers
  for (int d = 0; d < D; ++d) {
    const int32_t p = pos[t * D + d];
    if (p < 0) continue;
    uint8_t* dst = send + d * slab + int64_t(p) * rec.bytes;
    copy16(rows + t * rec.row_bytes, dst, rec.row_bytes);
    float* s = reinterpret_cast<float*>(dst + rec.scales_at);
    for (int g = threadIdx.x; g < rec.scale_cols; g += blockDim.x) s[g] = scales[t * rec.scale_cols + g];
    int32_t* id = reinterpret_cast<int32_t*>(dst + rec.ids_at);
    float* w = reinterpret_cast<float*>(dst + rec.weights_at);
    for (int j = threadIdx.x; j < top_k; j += blockDim.x) {
      id[j] = ids[t * top_k + j];
      w[j] = weights ? weights[t * top_k + j] : 0.0f;
    }
  }
}

__global__ void __launch_bounds__(kCopyThreads) ep_unpack_kernel(EpRecord rec, const uint8_t* recv, EpOwn own,
                                                                 int64_t T, int top_k, uint8_t* rows, float* scales,
                                                                 int32_t* ids, float* weights) {
  const int64_t r = blockIdx.x, peer = r / T, i = r % T;
  const uint8_t* slab = peer == own.index ? static_cast<const uint8_t*>(own.at) : recv + peer * rec.slab_bytes(T);
  pdl_wait();
  pdl_launch_dependents();
  const int32_t count = *reinterpret_cast<const int32_t*>(slab + T * rec.bytes);
  if (i >= count) {
    for (int j = threadIdx.x; j < top_k; j += blockDim.x) ids[r * top_k + j] = -1, weights[r * top_k + j] = 0.0f;
    return;
  }
  const uint8_t* src = slab + i * rec.bytes;
  copy16(src, rows + r * rec.row_bytes, rec.row_bytes);
  const float* s = reinterpret_cast<const float*>(src + rec.scales_at);
  for (int g = threadIdx.x; g < rec.scale_cols; g += blockDim.x) scales[r * rec.scale_cols + g] = s[g];
  const int32_t* id = reinterpret_cast<const int32_t*>(src + rec.ids_at);
  const float* w = reinterpret_cast<const float*>(src + rec.weights_at);
  for (int j = threadIdx.x; j < top_k; j += blockDim.x) ids[r * top_k + j] = id[j], weights[r * top_k + j] = w[j];
}

// Reads 8 partial values (f32 or bf16) at src as f32.
__device__ inline void load8(const float* src, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(src), b = *reinterpret_cast<const float4*>(src + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ inline void load8(const bf16* src, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const bf16* h = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = __bfloat162float(h[i]);
}

// Grid (token, 1024-column block), one 8-column chunk per thread; the partials of 4 destinations
// are loaded before they are added (in destination order).
template <class Partial>
__global__ void __launch_bounds__(kCopyThreads) ep_combine_kernel(const Partial* partial, EpOwn own,
                                                                  const int32_t* pos, int D, int64_t T, int64_t K,
                                                                  bf16* out) {
  constexpr int kU = 4;
  const int64_t t = blockIdx.x, c = int64_t(blockIdx.y) * kCombineColumns + threadIdx.x * 8;
  pdl_wait();
  pdl_launch_dependents();
  if (c >= K) return;
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  for (int d0 = 0; d0 < D; d0 += kU) {
    int32_t p[kU];
    float v[kU][8];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      p[u] = d0 + u < D ? pos[t * D + d0 + u] : -1;
      const Partial* block =
          d0 + u == own.index ? static_cast<const Partial*>(own.at) : partial + (d0 + u) * T * K;
      if (p[u] >= 0) load8(block + p[u] * K + c, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (p[u] >= 0)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] += v[u][i];
  }
  store_bf16x8(acc, out + t * K + c);
}

__global__ void bf16_to_f32_kernel(const bf16* src, int64_t n, float* dst) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

__global__ void f32_to_bf16_kernel(const float* src, int64_t n, bf16* dst) {
  pdl_wait();
  pdl_launch_dependents();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

dim3 combine_grid(int64_t M, int64_t K) {
  return dim3(static_cast<unsigned>(M), static_cast<unsigned>((K + kCombineColumns - 1) / kCombineColumns));
}

unsigned cast_blocks(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096)); }

}  // namespace

EpRecord EpRecord::make(int64_t row_bytes, int64_t scale_cols, int top_k) {
  auto up16 = [](int64_t b) { return (b + 15) / 16 * 16; };
  EpRecord r;
  r.row_bytes = row_bytes;
  r.scale_cols = scale_cols;
  r.scales_at = up16(row_bytes);
  r.ids_at = r.scales_at + up16(scale_cols * 4);
  r.weights_at = r.ids_at + up16(int64_t(top_k) * 4);
  r.bytes = r.weights_at + up16(int64_t(top_k) * 4);
  return r;
}

void launch_ep_plan(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* owner, int D,
                    int32_t* pos, int32_t* counts, cudaStream_t s) {
  FMOE_CHECK(D >= 1 && D <= kMaxDestinations, "the CUDA EP plan handles 1 to ", kMaxDestinations,
             " destinations, got ", D);
  launch(ep_plan_kernel, dim3(1), dim3(kPlanThreads), s, ids, M, top_k, num_experts, owner, D, pos, counts);
}

void launch_ep_pack(const EpRecord& rec, const void* rows, const float* scales, const int32_t* ids,
                    const float* weights, int64_t M, int top_k, const int32_t* pos, const int32_t* counts, int D,
                    int64_t T, void* send, cudaStream_t s) {
  FMOE_CHECK(D <= kCopyThreads, "the CUDA EP pack handles up to ", kCopyThreads, " destinations, got ", D);
  launch(ep_pack_kernel, dim3(static_cast<unsigned>(M > 0 ? M : 1)), dim3(kCopyThreads), s, rec,
         static_cast<const uint8_t*>(rows), scales, ids, weights, M, top_k, pos, counts, D, T,
         static_cast<uint8_t*>(send));
}

void launch_ep_unpack(const EpRecord& rec, const void* recv, EpOwn own, int num_sources, int64_t T, int top_k,
                      void* rows, float* scales, int32_t* ids, float* weights, cudaStream_t s) {
  if (num_sources * T == 0) return;
  launch(ep_unpack_kernel, dim3(static_cast<unsigned>(num_sources * T)), dim3(kCopyThreads), s, rec,
         static_cast<const uint8_t*>(recv), own, T, top_k, static_cast<uint8_t*>(rows), scales, ids, weights);
}

void launch_ep_combine(const float* partial, EpOwn own, const int32_t* pos, int64_t M, int D, int64_t T, int64_t K,
                       bf16* out, cudaStream_t s) {
  if (M == 0) return;
  launch(ep_combine_kernel<float>, combine_grid(M, K), dim3(kCopyThreads), s, partial, own, pos, D, T, K, out);
}

void launch_ep_combine(const bf16* partial, EpOwn own, const int32_t* pos, int64_t M, int D, int64_t T, int64_t K,
                       bf16* out, cudaStream_t s) {
  if (M == 0) return;
  launch(ep_combine_kernel<bf16>, combine_grid(M, K), dim3(kCopyThreads), s, partial, own, pos, D, T, K, out);
}

void launch_bf16_to_f32(const bf16* src, int64_t n, float* dst, cudaStream_t s) {
  if (n > 0) launch(bf16_to_f32_kernel, dim3(cast_blocks(n)), dim3(256), s, src, n, dst);
}

void launch_f32_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t s) {
  if (n > 0) launch(f32_to_bf16_kernel, dim3(cast_blocks(n)), dim3(256), s, src, n, dst);
}

}  // namespace fusedmoe::cuda
