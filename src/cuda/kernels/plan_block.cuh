// The row plan of one forward (see plan.cu): counts the rows of each local expert, scans them
// into offsets, lists the active experts and places every valid (token, slot) into its expert's
// rows. plan_block does it all in one block of kPlanThreads threads: device code so that the
// modular plan kernel and the monolithic route+plan kernel run the same code; the parts are the
// steps of the multi-block plan for large batches.
// Limits: num_local <= kItems * kPlanThreads (<= kMaxPlanExperts).
#pragma once

#include <algorithm>
#include <cub/block/block_scan.cuh>
#include <type_traits>

#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {

constexpr int kPlanThreads = 1024;

__device__ inline int local_expert(int32_t id, int num_experts, const int32_t* expert_map) {
  if (id < 0 || id >= num_experts) return -1;
  return expert_map ? expert_map[id] : id;
}

// The per-expert prefix sums of the plan, scanned together in one block scan: rows (offsets),
// active experts (positions in the active list) and work items (RowPlan::items, when
// plan.item_rows > 0).
struct PlanSums {
  int rows, active, items;
};
__device__ inline PlanSums operator+(PlanSums a, PlanSums b) {
  return {a.rows + b.rows, a.active + b.active, a.items + b.items};
}

// c[j] holds the rows of expert threadIdx.x * kItems + j (0 past the last expert); first[j] gets
// the sums over the experts before it. Returns the block's totals; the block's threads call it
// together.
template <int kItems, int kThreads>
__device__ inline PlanSums scan_plan(const int (&c)[kItems], int item_rows, PlanSums (&first)[kItems]) {
  using Scan = cub::BlockScan<PlanSums, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  PlanSums own[kItems], total;
#pragma unroll
  for (int j = 0; j < kItems; ++j)
    own[j] = {c[j], c[j] > 0, item_rows > 0 ? (c[j] + item_rows - 1) / item_rows : 0};
  Scan(scan_storage).ExclusiveSum(own, first, total);
  return total;
}

// The work items past the plan's n_items (expert -1, up to plan.item_grid) and the work counters (the item count in
// [2], the rest zeroed), for a plan with work items; the block's threads call it together.
__device__ inline void finish_items(const RowPlan& plan, int n_items) {
  for (int i = n_items + threadIdx.x; i < plan.item_grid; i += blockDim.x) plan.items[i] = PlanItem{-1, 0, 0, 0};
  if (plan.work_counters)
    for (int i = threadIdx.x; i < kPlanCounterInts + plan.item_grid; i += blockDim.x)
      plan.work_counters[i] = i == 2 ? n_items : 0;
}

// The active list and the work items from scan_plan's sums; plan.active[] must be -1 past the
// active experts (the caller writes it, with a __syncthreads() between).
template <int kItems>
__device__ inline void list_active(const int (&c)[kItems], const PlanSums (&first)[kItems], const PlanSums& total,
                                   int num_local, const RowPlan& plan) {
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = threadIdx.x * kItems + j;
    if (e >= num_local || c[j] == 0) continue;
    plan.active[first[j].active] = e;
    if (plan.item_rows > 0)  // offsets[e]: this thread's own write, before the caller's __syncthreads()
      for (int q = 0; q * plan.item_rows < c[j]; ++q)
        plan.items[first[j].items + q] = PlanItem{e, q * plan.item_rows, plan.offsets[e], c[j]};
  }
  if (plan.item_rows > 0) finish_items(plan, total.items);
}

// Counts, offsets, the active list and the work items from the per-expert row counts in counts[]
// (shared, the whole block's view); on return counts[e] holds offsets[e], the first row of expert e.
// The block has kThreads threads, num_local <= kItems * kThreads. write = false: the scan alone, the plan
// untouched (the blocks of the multi-block plan other than the one that writes it).
template <int kItems, int kThreads = kPlanThreads>
__device__ inline void plan_offsets(int* counts, int num_local, const RowPlan& plan, bool write = true) {
  int c[kItems];
  PlanSums first[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = threadIdx.x * kItems + j;
    c[j] = e < num_local ? counts[e] : 0;
  }
  const PlanSums total = scan_plan<kItems, kThreads>(c, plan.item_rows, first);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = threadIdx.x * kItems + j;
    if (e < num_local) {
      if (write) {
        plan.counts[e] = c[j];
        plan.offsets[e] = first[j].rows;
        plan.active[e] = -1;
      }
      counts[e] = first[j].rows;
    }
  }
  if (threadIdx.x == 0 && write) plan.offsets[num_local] = total.rows;
  __syncthreads();
  if (write) list_active(c, first, total, num_local, plan);
}

// Slots [begin, end) to rows: cursor[e] (shared) is the next free row of expert e.
__device__ inline void place_slots(const int32_t* ids, int64_t begin, int64_t end, int top_k, int num_experts,
                                   const int32_t* expert_map, int* cursor, const RowPlan& plan) {
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int e = local_expert(ids[i], num_experts, expert_map);
    int row = -1;
    if (e >= 0) {
      row = atomicAdd(&cursor[e], 1);
      plan.row_token[row] = static_cast<int32_t>(i / top_k);
      plan.row_expert[row] = e;
    }
    plan.slot_rows[i] = row;
  }
}

// Slots [begin, end) counted into counts[] (shared, zeroed by the caller).
__device__ inline void count_slots(const int32_t* ids, int64_t begin, int64_t end, int num_experts,
                                   const int32_t* expert_map, int* counts) {
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const int e = local_expert(ids[i], num_experts, expert_map);
    if (e >= 0) atomicAdd(&counts[e], 1);
  }
}

// Every thread of the block (kThreads, num_local <= kItems * kThreads) must call it; the ids must be
// visible to the whole block.
template <int kItems, int kThreads = kPlanThreads>
__device__ inline void plan_block(const int32_t* ids, int64_t num_slots, int top_k, int num_experts,
                                  const int32_t* expert_map, int num_local, const RowPlan& plan) {
  __shared__ int counts[kMaxPlanExperts];
  for (int e = threadIdx.x; e < num_local; e += kThreads) counts[e] = 0;
  __syncthreads();
  count_slots(ids, 0, num_slots, num_experts, expert_map, counts);
  __syncthreads();
  plan_offsets<kItems, kThreads>(counts, num_local, plan);  // counts[] becomes the insertion cursor
  place_slots(ids, 0, num_slots, top_k, num_experts, expert_map, counts, plan);
}

// The one-block plan's shape (kItems, kThreads) for num_local experts and `work` units a thread could
// take (the slots): the fewest of 128, 256, 512 or 1024 threads that give each expert and each unit a
// thread, and 2 or 4 experts a thread past 1024. A small block starts sooner and crosses its barriers
// faster (decode: 128 threads for 128 experts and one token).
template <class F>
void by_plan_block(int num_local, int64_t work, F&& f) {
  using std::integral_constant;
  const int64_t need = std::max<int64_t>(num_local, work);
  if (need <= 128) f(integral_constant<int, 1>{}, integral_constant<int, 128>{});
  else if (need <= 256) f(integral_constant<int, 1>{}, integral_constant<int, 256>{});
  else if (need <= 512) f(integral_constant<int, 1>{}, integral_constant<int, 512>{});
  else if (num_local <= kPlanThreads) f(integral_constant<int, 1>{}, integral_constant<int, kPlanThreads>{});
  else if (num_local <= 2 * kPlanThreads) f(integral_constant<int, 2>{}, integral_constant<int, kPlanThreads>{});
  else f(integral_constant<int, 4>{}, integral_constant<int, kPlanThreads>{});
}

}  // namespace fusedmoe::cuda
