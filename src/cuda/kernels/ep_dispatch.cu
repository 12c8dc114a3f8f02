// Expert-parallel dispatch and combine kernels (the device half of the CUDA EP PrepareFinalize;
// the exchanges are NCCL collectives between these launches, or the kernels' own stores into
// peer windows).
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
//  - ep_put (peer windows only; a block per partial row and 1024 columns): stores the partial
//    sums into their home ranks' windows.
//  - bf16 <-> f32 casts around the monolithic form's f32 reduce-scatter.
// Peer windows (EpPeer, kernels.h): on one NVLink domain pack and put store straight into the
// other ranks' NCCL symmetric memory, and the grid's last block stores a release signal (the call
// number) into each; unpack and combine wait for it with an acquire load. A wait past the
// timeout prints who waited for whom and traps.
// Limits: row bytes, K % 8 == 0 (16-byte copies, 8 columns per step).
#include <cub/block/block_scan.cuh>
#include <cuda/atomic>

#include <algorithm>
#include <cstdio>

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

// --- Peer windows: signals between ranks -------------------------------------------------------

__device__ inline uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__device__ inline uint32_t* signal_word(const EpPeer& p, int owner, int word) {
  return static_cast<uint32_t*>(p.peers[owner]) + word;
}

// Called by every thread at the end of a kernel. The grid's last block to finish (after every
// block's stores are visible system-wide) stores `call` into signal word `word` of every other
// rank's window and records the call in state[call_slot]; done counts the finished blocks.
__device__ inline void signal_peers_when_done(const EpPeer& p, uint32_t* done, int word, uint32_t call,
                                              int call_slot) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence_system();
    if (atomicAdd(done, 1u) == gridDim.x * gridDim.y - 1) {
      *done = 0;
      __threadfence_system();
      for (int r = 0; r < p.ranks; ++r)
        if (r != p.rank)
          ::cuda::atomic_ref<uint32_t, ::cuda::thread_scope_system>(*signal_word(p, r, word))
              .store(call, ::cuda::memory_order_release);
      p.state[call_slot] = call;
    }
  }
}

// Thread 0 waits until rank `from` has signalled `call` in word `word` of this rank's window; past
// the timeout it reports who waited for whom and traps (the stream fails; nothing hangs).
__device__ inline void wait_for_signal(const EpPeer& p, int word, int from, uint32_t call, const char* what) {
  ::cuda::atomic_ref<uint32_t, ::cuda::thread_scope_system> s(*signal_word(p, p.rank, word));
  const uint64_t start = global_ns();
  while (static_cast<int32_t>(s.load(::cuda::memory_order_acquire) - call) < 0) {
    if (global_ns() - start > static_cast<uint64_t>(p.timeout_ns)) {
      printf("fusedmoe: expert-parallel rank %d waited %.1f s for rank %d's %s of call %u; giving up\n", p.rank,
             p.timeout_ns * 1e-9, from, what, call);
      __trap();
    }
  }
}

__device__ inline uint8_t* window_at(const EpPeer& p, int owner, int64_t at) {
  return static_cast<uint8_t*>(p.peers[owner]) + at;
}

__global__ void __launch_bounds__(kCopyThreads) ep_pack_kernel(EpRecord rec, const uint8_t* rows, const float* scales,
                                                               const int32_t* ids, const float* weights, int64_t M,
                                                               int top_k, const int32_t* pos, const int32_t* counts,
                                                               int D, int64_t T, uint8_t* send, EpPeer peer) {
  const int64_t t = blockIdx.x;
  const int64_t slab = rec.slab_bytes(T);
  pdl_wait();
  pdl_launch_dependents();
  const uint32_t call = peer.peers ? peer.state[0] + 1 : 0;
  // Destination d's slab: in the send buffer, or block `rank` of d's window.
  auto slab_of = [&](int d) {
    return peer.peers ? window_at(peer, d, peer.dispatch_at + (call & 1) * peer.dispatch_parity_bytes +
                                               peer.rank * slab)
                      : send + d * slab;
  };
  if (t == 0 && threadIdx.x < D)
    *reinterpret_cast<int32_t*>(slab_of(static_cast<int>(threadIdx.x)) + T * rec.bytes) = counts[threadIdx.x];
  for (int d = 0; d < D && t < M; ++d) {  // M == 0: one block writes the headers
    const int32_t p = pos[t * D + d];
    if (p < 0) continue;
    uint8_t* dst = slab_of(d) + int64_t(p) * rec.bytes;
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
  if (peer.peers) signal_peers_when_done(peer, &peer.state[1], peer.rank, call, 0);
}

__global__ void __launch_bounds__(kCopyThreads) ep_unpack_kernel(EpRecord rec, const uint8_t* recv, EpOwn own,
                                                                 int64_t T, int top_k, uint8_t* rows, float* scales,
                                                                 int32_t* ids, float* weights, EpPeer window) {
  const int64_t r = blockIdx.x, peer = r / T, i = r % T;
  pdl_wait();
  pdl_launch_dependents();
  if (window.peers) {  // this rank's window, once the source has signalled this call's slab
    const uint32_t call = window.state[0];
    recv = window_at(window, window.rank, window.dispatch_at + (call & 1) * window.dispatch_parity_bytes);
    if (threadIdx.x == 0 && peer != window.rank) wait_for_signal(window, int(peer), int(peer), call, "dispatch");
    __syncthreads();
  }
  const uint8_t* slab = peer == own.index ? static_cast<const uint8_t*>(own.at) : recv + peer * rec.slab_bytes(T);
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

// Grid (row of n * T, 1024-column block): partial row d * T + i into rank d's window (block rank,
// this combine call's parity) when rank d sent at least i + 1 tokens; then the signal.
__global__ void __launch_bounds__(kCopyThreads) ep_put_kernel(EpRecord rec, const bf16* partial, int64_t T, int64_t K,
                                                              EpPeer peer) {
  const int64_t r = blockIdx.x, i = r % T;
  const int d = static_cast<int>(r / T);
  pdl_wait();
  pdl_launch_dependents();
  const uint32_t call = peer.state[2] + 1;
  const uint8_t* received =
      window_at(peer, peer.rank, peer.dispatch_at + (peer.state[0] & 1) * peer.dispatch_parity_bytes);
  const int32_t sent = *reinterpret_cast<const int32_t*>(received + d * rec.slab_bytes(T) + T * rec.bytes);
  const int64_t c0 = int64_t(blockIdx.y) * kCombineColumns, cols = std::min<int64_t>(kCombineColumns, K - c0);
  if (d != peer.rank && i < sent && cols > 0) {
    bf16* home = reinterpret_cast<bf16*>(window_at(peer, d, peer.combine_at + (call & 1) * peer.combine_parity_bytes));
    bf16* dst = home + (peer.rank * T + i) * K + c0;
    copy16(reinterpret_cast<const uint8_t*>(partial + r * K + c0), reinterpret_cast<uint8_t*>(dst), cols * 2);
  }
  signal_peers_when_done(peer, &peer.state[3], peer.ranks + peer.rank, call, 2);
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
                                                                  const int32_t* pos, int64_t M, int D, int64_t T,
                                                                  int64_t K, bf16* out, EpPeer peer) {
  constexpr int kU = 4;
  const int64_t t = blockIdx.x, c = int64_t(blockIdx.y) * kCombineColumns + threadIdx.x * 8;
  pdl_wait();
  pdl_launch_dependents();
  if (peer.peers) {  // this rank's window, once every other rank has signalled this combine call
    const uint32_t call = peer.state[2];
    partial = reinterpret_cast<const Partial*>(
        window_at(peer, peer.rank, peer.combine_at + (call & 1) * peer.combine_parity_bytes));
    if (threadIdx.x == 0)
      for (int r = 0; r < peer.ranks; ++r)
        if (r != peer.rank) wait_for_signal(peer, peer.ranks + r, r, call, "partial sums");
    __syncthreads();
  }
  if (t >= M || c >= K) return;
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
                    int64_t T, void* send, const EpPeer& peer, cudaStream_t s) {
  FMOE_CHECK(D <= kCopyThreads, "the CUDA EP pack handles up to ", kCopyThreads, " destinations, got ", D);
  launch(ep_pack_kernel, dim3(static_cast<unsigned>(M > 0 ? M : 1)), dim3(kCopyThreads), s, rec,
         static_cast<const uint8_t*>(rows), scales, ids, weights, M, top_k, pos, counts, D, T,
         static_cast<uint8_t*>(send), peer);
}

void launch_ep_unpack(const EpRecord& rec, const void* recv, EpOwn own, int num_sources, int64_t T, int top_k,
                      void* rows, float* scales, int32_t* ids, float* weights, const EpPeer& peer, cudaStream_t s) {
  if (num_sources * T == 0) return;
  launch(ep_unpack_kernel, dim3(static_cast<unsigned>(num_sources * T)), dim3(kCopyThreads), s, rec,
         static_cast<const uint8_t*>(recv), own, T, top_k, static_cast<uint8_t*>(rows), scales, ids, weights, peer);
}

void launch_ep_put(const EpRecord& rec, const bf16* partial, int64_t T, int64_t K, const EpPeer& peer,
                   cudaStream_t s) {
  FMOE_CHECK(peer.peers && T > 0, "the CUDA EP put needs a peer window and T > 0");
  launch(ep_put_kernel, combine_grid(peer.ranks * T, K), dim3(kCopyThreads), s, rec, partial, T, K, peer);
}

void launch_ep_combine(const float* partial, EpOwn own, const int32_t* pos, int64_t M, int D, int64_t T, int64_t K,
                       bf16* out, cudaStream_t s) {
  if (M == 0) return;
  launch(ep_combine_kernel<float>, combine_grid(M, K), dim3(kCopyThreads), s, partial, own, pos, M, D, T, K, out,
         EpPeer{});
}

void launch_ep_combine(const bf16* partial, EpOwn own, const int32_t* pos, int64_t M, int D, int64_t T, int64_t K,
                       bf16* out, const EpPeer& peer, cudaStream_t s) {
  if (M == 0 && !peer.peers) return;
  // With a peer window every rank waits in the kernel, also with no tokens of its own (one idle block).
  const dim3 grid = M ? combine_grid(M, K) : dim3(1);
  launch(ep_combine_kernel<bf16>, grid, dim3(kCopyThreads), s, partial, own, pos, M, D, T, K, out, peer);
}

void launch_bf16_to_f32(const bf16* src, int64_t n, float* dst, cudaStream_t s) {
  if (n > 0) launch(bf16_to_f32_kernel, dim3(cast_blocks(n)), dim3(256), s, src, n, dst);
}

void launch_f32_to_bf16(const float* src, int64_t n, bf16* dst, cudaStream_t s) {
  if (n > 0) launch(f32_to_bf16_kernel, dim3(cast_blocks(n)), dim3(256), s, src, n, dst);
}

}  // namespace fusedmoe::cuda
