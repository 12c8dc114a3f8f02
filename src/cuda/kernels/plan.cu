// Row plan kernels: count the rows of each local expert, scan them into offsets, list the active
// experts and place every valid (token, slot) into its expert's rows (and list the small-M
// kernels' work items when the plan asks: RowPlan::items). Ids outside [0, E) and
// experts mapped to -1 contribute no row. Within an expert, rows are in no particular order (every
// consumer reads the plan through slot_rows / row_token, so the output does not depend on it).
// Up to kOneBlockSlots slots: one block does it all (one launch; the counts live in shared memory). Above, two
// launches over chunks of chunk_slots() slots:
//   count (a block per chunk): the chunk's per-expert counts -> scratch[chunk][e];
//   place (a block per chunk): every block sums the counts over the chunks and scans them into offsets (block 0
//         writes counts, offsets, the active list and the items), then places its chunk: expert e's rows from
//         offsets[e] + the rows of e in the chunks before it on.
// Either zeroes the fused decode kernel's counters when asked (the one block, or the count kernel's block 0).
// For 65536 slots (qwen3-30b-a3b at 8192 tokens) the single block took 137 us on H200 (ncu), three launches (count,
// a one-block offsets kernel, place) 23 us. Kernel timelines on H200 (session 62, own us: each kernel's end minus
// the previous one's): at 1024 slots the block and the two launches tie (4.8 against 1.2 + 3.6), at 2048 the two
// launches win (7.1 against 1.2 + 3.8), and at 8192-16384 two launches against three save 2.6-2.9 us (1.7 + 3.9
// against 1.6 + 3.3 + 3.3), of which the gather after them keeps 1.3-1.8 (qwen3-30b-a3b 1.004-1.007x at
// 256-2048 tokens; deepseek-v3 1.000x).
// Limits: num_local <= kMaxPlanExperts (the one block: up to 4 scan items for each of its 1024 threads, a chunk
// block up to 8 for each of its 512; the launch picks the fewest that cover num_local, which keeps the decode-size
// plan short).
#include <algorithm>
#include <type_traits>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/plan_block.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int64_t kOneBlockSlots = 1024;
constexpr int kChunkThreads = 512;

// Slots per chunk: a slot per thread up to kSmallChunksUpTo slots (16-32 blocks; with 2048 a chunk, deepseek-v3's and
// qwen3-30b-a3b's 1024 tokens ran 4 blocks), 2048 above (fewer chunks for each place block to sum).
constexpr int64_t kSmallChunksUpTo = 16384;
int64_t chunk_slots(int64_t slots) { return slots <= kSmallChunksUpTo ? kChunkThreads : 2048; }
int64_t num_chunks(int64_t slots) {
  return slots <= kOneBlockSlots ? 0 : (slots + chunk_slots(slots) - 1) / chunk_slots(slots);
}

template <int kItems, int kThreads>
__global__ void __launch_bounds__(kThreads)
    plan_kernel(const int32_t* ids, int64_t num_slots, int top_k, int num_experts, const int32_t* expert_map,
                int num_local, RowPlan plan, int32_t* zero, int64_t n_zero) {
  pdl_wait();
  for (int64_t i = threadIdx.x; i < n_zero; i += kThreads) zero[i] = 0;
  plan_block<kItems, kThreads>(ids, num_slots, top_k, num_experts, expert_map, num_local, plan);
  pdl_launch_dependents();
}

__global__ void __launch_bounds__(kChunkThreads)
    plan_count_kernel(const int32_t* ids, int64_t num_slots, int64_t chunk, int num_experts, const int32_t* expert_map,
                      int num_local, int32_t* chunk_counts, int32_t* zero, int64_t n_zero) {
  __shared__ int counts[kMaxPlanExperts];
  pdl_wait();
  if (blockIdx.x == 0)
    for (int64_t i = threadIdx.x; i < n_zero; i += kChunkThreads) zero[i] = 0;
  for (int e = threadIdx.x; e < num_local; e += kChunkThreads) counts[e] = 0;
  __syncthreads();
  const int64_t begin = int64_t(blockIdx.x) * chunk;
  count_slots(ids, begin, std::min(begin + chunk, num_slots), num_experts, expert_map, counts);
  __syncthreads();
  for (int e = threadIdx.x; e < num_local; e += kChunkThreads)
    chunk_counts[int64_t(blockIdx.x) * num_local + e] = counts[e];
  pdl_launch_dependents();
}

// Sums over chunks of chunk_counts[c][e]: all of them, and those before chunk `before`; the loads are independent,
// 8 in flight. The counts are the previous kernel's output: ld.global.cg, not __ldg — the compiler may move an
// ld.global.nc whose address does not depend on a read after pdl_wait above the wait (it did so in a small-M variant,
// session 22), and these addresses depend on nothing read.
struct ChunkSums {
  int all, before;
};
__device__ inline ChunkSums sum_chunks(const int32_t* chunk_counts, int64_t n, int64_t before, int num_local, int e) {
  ChunkSums sum{0, 0};
#pragma unroll 8
  for (int64_t c = 0; c < n; ++c) {
    const int v = __ldcg(chunk_counts + c * num_local + e);
    sum.all += v;
    sum.before += c < before ? v : 0;
  }
  return sum;
}

// Block c scans the counts summed over every chunk into offsets (block 0 also writes them, the active list and the
// items) and places chunk c: expert e's rows from offsets[e] + the rows of e in chunks before c on. Every block
// scans (the same few thousand loads a block, in parallel) so that no launch stands between counting and placing.
template <int kItems>
__global__ void __launch_bounds__(kChunkThreads)
    plan_place_kernel(const int32_t* ids, int64_t num_slots, int64_t chunk, int64_t chunks, int top_k, int num_experts,
                      const int32_t* expert_map, int num_local, const int32_t* chunk_counts, RowPlan plan) {
  __shared__ int cursor[kMaxPlanExperts], before[kMaxPlanExperts];
  pdl_wait();
  for (int e = threadIdx.x; e < num_local; e += kChunkThreads) {
    const ChunkSums sum = sum_chunks(chunk_counts, chunks, blockIdx.x, num_local, e);
    cursor[e] = sum.all;
    before[e] = sum.before;
  }
  __syncthreads();
  plan_offsets<kItems, kChunkThreads>(cursor, num_local, plan, blockIdx.x == 0);  // cursor[e] = offsets[e]
  for (int e = threadIdx.x; e < num_local; e += kChunkThreads) cursor[e] += before[e];
  __syncthreads();
  const int64_t begin = int64_t(blockIdx.x) * chunk;
  place_slots(ids, begin, std::min(begin + chunk, num_slots), top_k, num_experts, expert_map, cursor, plan);
  pdl_launch_dependents();
}

// Experts a thread of a chunk block scans: the fewest of 1, 2, 4 or 8 that cover num_local.
template <class F>
void by_items(int num_local, F&& f) {
  static_assert(8 * kChunkThreads >= kMaxPlanExperts);
  if (num_local <= kChunkThreads)
    f(std::integral_constant<int, 1>{});
  else if (num_local <= 2 * kChunkThreads)
    f(std::integral_constant<int, 2>{});
  else if (num_local <= 4 * kChunkThreads)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 8>{});
}

}  // namespace

// Never less for more slots (a workspace sized for a batch serves every smaller one): past kSmallChunksUpTo slots the
// chunks grow, so the scratch keeps room for the most small chunks.
int64_t plan_scratch_ints(int64_t num_slots, int64_t num_local) {
  const int64_t chunks = num_chunks(num_slots);
  return (num_slots > kSmallChunksUpTo ? std::max(chunks, num_chunks(kSmallChunksUpTo)) : chunks) * num_local;
}

int64_t plan_max_items(int64_t num_slots, int64_t num_local, int item_rows) {
  if (item_rows <= 0) return 0;
  const int64_t most_active = std::min(num_local, num_slots);
  return most_active + (num_slots - most_active) / item_rows;
}

void launch_plan(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* expert_map, int num_local,
                 const RowPlan& plan, int32_t* scratch, cudaStream_t s, int32_t* zero, int64_t n_zero) {
  FMOE_CHECK(num_local <= kMaxPlanExperts, "the CUDA row plan handles up to ", kMaxPlanExperts, " local experts, got ",
             num_local);
  const int64_t slots = M * top_k, chunks = num_chunks(slots);
  if (chunks == 0) {
    by_plan_block(num_local, slots, [&](auto items, auto threads) {
      constexpr int kThreads = decltype(threads)::value;
      launch(plan_kernel<decltype(items)::value, kThreads>, 1, kThreads, s, ids, slots, top_k, num_experts,
             expert_map, num_local, plan, zero, n_zero);
    });
    return;
  }
  FMOE_CHECK(scratch != nullptr, "the CUDA row plan of ", slots, " slots needs plan_scratch_ints() ints of scratch");
  const dim3 grid(static_cast<unsigned>(chunks));
  const int64_t chunk = chunk_slots(slots);
  launch(plan_count_kernel, grid, kChunkThreads, s, ids, slots, chunk, num_experts, expert_map, num_local, scratch, zero,
         n_zero);
  by_items(num_local, [&](auto items) {
    launch(plan_place_kernel<decltype(items)::value>, grid, kChunkThreads, s, ids, slots, chunk, chunks, top_k,
           num_experts, expert_map, num_local, static_cast<const int32_t*>(scratch), plan);
  });
}

}  // namespace fusedmoe::cuda
