// Row plan kernel: counts the rows of each local expert, scans them into offsets, lists the
// active experts and places every valid (token, slot) into its expert's rows. One block of
// 1024 threads does it all (no host synchronisation, no second launch); the counts live in
// shared memory. Ids outside [0, E) and experts mapped to -1 contribute no row.
// Limits: num_local <= kMaxPlanExperts (up to 4 scan items per thread; the launch picks the
// fewest that cover num_local, which keeps the decode-size plan short).
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/plan_block.cuh"

namespace fusedmoe::cuda {
namespace {

template <int kItems>
__global__ void __launch_bounds__(kPlanThreads) plan_kernel(const int32_t* ids, int64_t num_slots, int top_k,
                                                            int num_experts, const int32_t* expert_map,
                                                            int num_local, RowPlan plan) {
  pdl_wait();
  plan_block<kItems>(ids, num_slots, top_k, num_experts, expert_map, num_local, plan);
  pdl_launch_dependents();
}

}  // namespace

void launch_plan(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* expert_map,
                 int num_local, const RowPlan& plan, cudaStream_t s) {
  FMOE_CHECK(num_local <= kMaxPlanExperts, "the CUDA row plan handles up to ", kMaxPlanExperts,
             " local experts, got ", num_local);
  const int64_t slots = M * top_k;
  if (num_local <= kPlanThreads)
    launch(plan_kernel<1>, 1, kPlanThreads, s, ids, slots, top_k, num_experts, expert_map, num_local, plan);
  else if (num_local <= 2 * kPlanThreads)
    launch(plan_kernel<2>, 1, kPlanThreads, s, ids, slots, top_k, num_experts, expert_map, num_local, plan);
  else
    launch(plan_kernel<4>, 1, kPlanThreads, s, ids, slots, top_k, num_experts, expert_map, num_local, plan);
}

}  // namespace fusedmoe::cuda
