// The batched activation format on CUDA: activations [E_local, T, K] (T = max_tokens_per_expert),
// local expert e's rows at e*T .. e*T + count[e], the rest of its batch unused.
//  - batch_slots (one block): where each (token, slot) sits, batch_pos[i] = e*T + position, and
//    each expert's count. A token gets one row per local expert even when its ids name that
//    expert twice (both slots then read the one row: the expert output does not depend on the
//    slot, its weight is applied in the reduce), so an expert never holds more rows than there
//    are tokens — T >= tokens is the host's whole capacity check. Positions come from shared-
//    memory atomics: the order inside a batch varies from run to run, which changes no result
//    (every row is computed on its own and the reduce sums slots in slot order).
//  - batch_pack (a block per slot): copies each token's row (and f32 scales) into its batch rows.
//  - batched_plan: the RowPlan of a batch for the expert kernels — offsets[e] = e*T, counts
//    clamped to [0, T] (device counts cannot be checked on the host without a sync), rows past
//    an expert's count marked row_expert = -1 so the row-wise kernels skip them, row_token[r] = r,
//    and the small-M work items when plan.item_rows > 0.
// Limits: num_local <= kMaxPlanExperts, num_local * T < 2^31 (int32 rows).
#include <algorithm>

#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/launch.cuh"
#include "cuda/kernels/plan_block.cuh"

namespace fusedmoe::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kScanItems = kMaxPlanExperts / kThreads;

// The first slot of token t (slots [t*k, i]) whose id equals ids[i].
__device__ inline int64_t first_slot_with_id(const int32_t* ids, int64_t i, int top_k) {
  for (int64_t j = i - i % top_k; j < i; ++j)
    if (ids[j] == ids[i]) return j;
  return i;
}

__global__ void __launch_bounds__(kThreads) batch_slots_kernel(const int32_t* ids, int64_t slots, int top_k,
                                                               int num_experts, const int32_t* expert_map,
                                                               int num_local, int64_t T, int32_t* batch_pos,
                                                               int32_t* counts) {
  __shared__ int cursor[kMaxPlanExperts];
  pdl_wait();
  for (int e = threadIdx.x; e < num_local; e += kThreads) cursor[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < slots; i += kThreads) {
    const int e = local_expert(ids[i], num_experts, expert_map);
    int32_t pos = -1;
    if (e >= 0 && first_slot_with_id(ids, i, top_k) == i) {
      const int p = atomicAdd(&cursor[e], 1);
      if (p < T) pos = static_cast<int32_t>(e * T + p);  // always, when the host checked T >= tokens
    }
    batch_pos[i] = pos;
  }
  __syncthreads();  // the first slots' positions are visible to the block
  for (int64_t i = threadIdx.x; i < slots; i += kThreads) {
    if (local_expert(ids[i], num_experts, expert_map) < 0) continue;
    const int64_t first = first_slot_with_id(ids, i, top_k);
    if (first != i) batch_pos[i] = batch_pos[first];
  }
  pdl_launch_dependents();
  for (int e = threadIdx.x; e < num_local; e += kThreads) counts[e] = min(cursor[e], static_cast<int>(T));
}

// Block i copies slot i's token row when the slot owns a batch row (the first slot of its token
// with that position).
__global__ void __launch_bounds__(128) batch_pack_kernel(const uint8_t* rows, int64_t row_bytes, const float* scales,
                                                         int64_t G, const int32_t* batch_pos, int top_k,
                                                         uint8_t* out_rows, float* out_scales) {
  const int64_t i = blockIdx.x;
  pdl_wait();
  pdl_launch_dependents();
  const int32_t pos = batch_pos[i];
  if (pos < 0) return;
  for (int64_t j = i - i % top_k; j < i; ++j)
    if (batch_pos[j] == pos) return;
  const int64_t token = i / top_k;
  const uint4* s = reinterpret_cast<const uint4*>(rows + token * row_bytes);
  uint4* d = reinterpret_cast<uint4*>(out_rows + int64_t(pos) * row_bytes);
  for (int64_t c = threadIdx.x; c < row_bytes / 16; c += blockDim.x) d[c] = s[c];
  if (scales)
    for (int64_t g = threadIdx.x; g < G; g += blockDim.x) out_scales[int64_t(pos) * G + g] = scales[token * G + g];
}

__global__ void __launch_bounds__(kThreads) batched_plan_kernel(const int32_t* expert_num_tokens, int num_local,
                                                                int64_t T, RowPlan plan) {
  pdl_wait();
  if (blockIdx.x == 0) {  // counts, offsets, the active list and the work items
    int c[kScanItems];
    PlanSums first[kScanItems];
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) {
      const int e = threadIdx.x * kScanItems + j;
      c[j] = e < num_local ? max(0, min(expert_num_tokens[e], static_cast<int>(T))) : 0;
      if (e < num_local) {
        plan.counts[e] = c[j];
        plan.offsets[e] = static_cast<int32_t>(e * T);
        plan.active[e] = -1;
      }
    }
    if (threadIdx.x == 0) plan.offsets[num_local] = static_cast<int32_t>(num_local * T);
    const PlanSums total = scan_plan<kScanItems, kThreads>(c, plan.item_rows, first);
    __syncthreads();  // every -1 above is written before the active entries below
    list_active(c, first, total, num_local, plan);
  }
  const int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (r < num_local * T) {
    const int e = static_cast<int>(r / T);
    const int c = max(0, min(expert_num_tokens[e], static_cast<int>(T)));
    plan.row_token[r] = static_cast<int32_t>(r);
    plan.row_expert[r] = r - e * T < c ? e : -1;
  }
  pdl_launch_dependents();
}

}  // namespace

void launch_batch_slots(const int32_t* ids, int64_t M, int top_k, int num_experts, const int32_t* expert_map,
                        int num_local, int64_t T, int32_t* batch_pos, int32_t* counts, cudaStream_t s) {
  FMOE_CHECK(num_local <= kMaxPlanExperts, "the CUDA batched format handles up to ", kMaxPlanExperts,
             " local experts, got ", num_local);
  launch(batch_slots_kernel, 1, kThreads, s, ids, M * top_k, top_k, num_experts, expert_map, num_local, T, batch_pos,
         counts);
}

void launch_batch_pack(const void* rows, int64_t row_bytes, const float* scales, int64_t G, const int32_t* batch_pos,
                       int64_t M, int top_k, void* out_rows, float* out_scales, cudaStream_t s) {
  if (M == 0) return;
  launch(batch_pack_kernel, dim3(static_cast<unsigned>(M * top_k)), dim3(128), s, static_cast<const uint8_t*>(rows),
         row_bytes, scales, G, batch_pos, top_k, static_cast<uint8_t*>(out_rows), out_scales);
}

void launch_batched_plan(const int32_t* expert_num_tokens, int num_local, int64_t T, const RowPlan& plan,
                         cudaStream_t s) {
  FMOE_CHECK(num_local <= kMaxPlanExperts, "the CUDA batched format handles up to ", kMaxPlanExperts,
             " local experts, got ", num_local);
  FMOE_CHECK(num_local * T < (int64_t(1) << 31), "the CUDA batched format needs num_local_experts x ",
             "max_tokens_per_expert < 2^31 rows, got ", num_local, " x ", T);
  const int64_t blocks = std::max<int64_t>(1, (num_local * T + kThreads - 1) / kThreads);
  launch(batched_plan_kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), s, expert_num_tokens, num_local, T,
         plan);
}

}  // namespace fusedmoe::cuda
