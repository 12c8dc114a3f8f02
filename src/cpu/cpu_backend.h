// Internal interfaces of the CPU backend, shared by its files.
#pragma once

#include <cstdint>
#include <memory>

#include "core/route_token.h"
#include "fusedmoe/comm.h"
#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/weights.h"
#include "fusedmoe/workspace.h"

namespace fusedmoe::cpu {

// ---- routing (router.cpp) -------------------------------------------------------------
void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights);

// ---- activation quantization (quantize_rows.cpp) ---------------------------------------
// Quantizes one row of `cols` f32 values to fp8 per the scheme (see quant.h) into q[cols]
// and scales[activation_scale_cols(scheme, cols)].
void quantize_row_fp8(QuantScheme scheme, const float* x, int64_t cols, float static_scale, uint8_t* q, float* scales);

// The standard-format activations prepare hands the experts: hidden with the router weight
// applied on the input (llama4) and quantized per scheme. Returns hidden itself when there
// is nothing to do. Shared by the modular PrepareFinalize and the monolithic experts.
struct QuantizedRows {
  Tensor data;    // [M, K] bf16 or fp8
  Tensor scales;  // f32 [M, G] or undefined
};
size_t quantized_rows_bytes(const MoEConfig& config, int64_t num_tokens);
QuantizedRows quantize_input_rows(const MoEConfig& config, const Tensor& hidden, const Tensor& topk_weights,
                                  const Tensor& static_input_scale, Workspace& workspace);

// ---- the batched format (prepare_finalize_cpu.cpp) ---------------------------------------
// The first local expert with more rows than max_tokens_per_expert (expert -1: none).
struct BatchedOverflow {
  int64_t expert = -1, rows = 0;
};
BatchedOverflow find_batched_overflow(const MoEConfig& config, const Tensor& topk_ids);
size_t batched_rows_bytes(const MoEConfig& config);
// Packs the rows of each local expert into [E_local, max_tokens_per_expert, K] in
// token-then-slot order (capacity already checked); keeps ids/weights for the reduce.
PreparedActivations pack_batched(const MoEConfig& config, const QuantizedRows& rows, const Tensor& topk_ids,
                                 const Tensor& topk_weights, Workspace& workspace);

// ---- the expert MLP pipeline (expert_mlp.cpp) ------------------------------------------
// Rows grouped by local expert: rows [offsets[e], offsets[e+1]) belong to local expert e;
// row r reads input row src_row[r] and writes output row dst_row[r].
struct RowPlan {
  const int64_t* offsets;
  const int64_t* src_row;
  const int64_t* dst_row;
  int64_t num_rows;
};

// Local expert of a top-k id: -1 when the id is outside [0, E) or not local.
inline int32_t local_expert_of(int32_t id, int64_t num_experts, const int32_t* expert_map) {
  if (id < 0 || id >= num_experts) return -1;
  return expert_map ? expert_map[id] : id;
}

size_t row_plan_bytes(const MoEConfig& config, int64_t max_rows);
// Standard format: one row per valid (token, slot) in token-then-slot order per expert.
RowPlan plan_rows_by_expert(const MoEConfig& config, const Tensor& topk_ids, Workspace& workspace);

size_t expert_mlp_bytes(const MoEConfig& config, int64_t max_rows);
// For every planned row: GEMM1, bias, activation, intermediate re-quantization, GEMM2, bias.
// input: [*, K] bf16 or fp8 rows (+ f32 scales); output: f32 rows of K.
void run_expert_mlp(const MoEConfig& config, const ExpertWeights& weights, const Tensor& input,
                    const Tensor& input_scales, const RowPlan& plan, float* output, Workspace& workspace);

// ---- weight and reduce (topk_reduce.cpp) -----------------------------------------------
// out[t] = bf16(sum over valid slots k, in order, of w[t,k] * per_slot[t,k]); w = 1 when the
// router weight was applied on the input.
void reduce_per_slot(const MoEConfig& config, const Tensor& per_slot, const Tensor& topk_ids,
                     const Tensor& topk_weights, const Tensor& out);
void reduce_batched(const MoEConfig& config, const Tensor& batched, const Tensor& topk_ids,
                    const Tensor& topk_weights, const Tensor& out);
void reduce_batched_f32(const MoEConfig& config, const Tensor& batched, const Tensor& topk_ids,
                        const Tensor& topk_weights, float* out);

// ---- factories (experts_cpu.cpp, prepare_finalize_cpu.cpp) -----------------------------
std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, bool monolithic);
std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool monolithic);
// Expert-parallel PrepareFinalize implementations (prepare_finalize_ep_cpu.cpp).
std::unique_ptr<PrepareFinalize> make_ep_prepare_finalize(const MoEConfig& config, const Communicator& communicator,
                                                          bool monolithic);

// out[t] = sum over valid local slots, in order, of w[t,k] * per_slot[t,k], in f32 (the
// partial sum of this rank's experts under expert parallelism).
void reduce_per_slot_f32(const MoEConfig& config, const Tensor& per_slot, const Tensor& topk_ids,
                         const Tensor& topk_weights, float* out);

}  // namespace fusedmoe::cpu
