// Row plan kernel: counts the rows of each local expert, scans them into offsets, lists the
// active experts and places every valid (token, slot) into its expert's rows. One block of
// 1024 threads does it all (no host synchronisation, no second launch); the counts live in
// shared memory. Ids outside [0, E) and experts mapped to -1 contribute no row.
// Limits: num_local <= kMaxPlanExperts (up to 4 scan items per thread; the launch picks the
// fewest that cover num_local, which keeps the decode-size plan short).
#include <cub/block/block_scan.cuh>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 1024;

__device__ inline int local_expert(int32_t id, int num_experts, const int32_t* expert_map) {
  if (id < 0 || id >= num_experts) return -1;
  return expert_map ? expert_map[id] : id;
}

template <int kItems>
__global__ void __launch_bounds__(kThreads) plan_kernel(const int32_t* ids, int64_t num_slots, int top_k,
                                                        int num_experts, const int32_t* expert_map, int num_local,
                                                        RowPlan plan) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int counts[kMaxPlanExperts];
  pdl_wait();
  for (int e = threadIdx.x; e < num_local; e += kThreads) counts[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < num_slots; i += kThreads) {
    const int e = local_expert(ids[i], num_experts, expert_map);
    if (e >= 0) atomicAdd(&counts[e], 1);
  }
  __syncthreads();

  int c[kItems], offset[kItems], is_active[kItems], active_pos[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = threadIdx.x * kItems + j;
    c[j] = e < num_local ? counts[e] : 0;
    is_active[j] = c[j] > 0;
  }
  int total;
  Scan(scan_storage).ExclusiveSum(c, offset, total);
  __syncthreads();
  Scan(scan_storage).ExclusiveSum(is_active, active_pos);
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = threadIdx.x * kItems + j;
    if (e < num_local) {
      plan.counts[e] = c[j];
      plan.offsets[e] = offset[j];
      plan.active[e] = -1;
      counts[e] = offset[j];  // becomes the insertion cursor
    }
  }
  if (threadIdx.x == 0) plan.offsets[num_local] = total;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int e = threadIdx.x * kItems + j;
    if (e < num_local && is_active[j]) plan.active[active_pos[j]] = e;
  }
  for (int64_t i = threadIdx.x; i < num_slots; i += kThreads) {
    const int e = local_expert(ids[i], num_experts, expert_map);
    int row = -1;
    if (e >= 0) {
      row = atomicAdd(&counts[e], 1);
      plan.row_token[row] = static_cast<int32_t>(i / top_k);
      plan.row_expert[row] = e;
    }
    plan.slot_rows[i] = row;
  }
  pdl_launch_dependents();
}

}  // namespace

void launch_plan(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* expert_map,
                 int num_local, const RowPlan& plan, cudaStream_t s) {
  FMOE_CHECK(num_local <= kMaxPlanExperts, "the CUDA row plan handles up to ", kMaxPlanExperts,
             " local experts, got ", num_local);
  const int64_t slots = M * top_k;
  if (num_local <= kThreads)
    launch(plan_kernel<1>, 1, kThreads, s, ids, slots, top_k, num_experts, expert_map, num_local, plan);
  else if (num_local <= 2 * kThreads)
    launch(plan_kernel<2>, 1, kThreads, s, ids, slots, top_k, num_experts, expert_map, num_local, plan);
  else
    launch(plan_kernel<4>, 1, kThreads, s, ids, slots, top_k, num_experts, expert_map, num_local, plan);
}

}  // namespace fusedmoe::cuda
