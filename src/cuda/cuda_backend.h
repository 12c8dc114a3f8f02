// Internal declarations of the CUDA backend (host side).
#pragma once

#include <memory>

#include "fusedmoe/comm.h"
#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/weights.h"
#include "fusedmoe/workspace.h"

namespace fusedmoe::cuda {

std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, bool monolithic);
// monolithic_experts_cuda.cpp
std::unique_ptr<Experts> make_monolithic_experts(const MoEConfig& config, const ExpertWeights& weights);
std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool monolithic);
// expert_input.cpp: the rows the experts read — for the fp8 schemes e4m3 with one f32 scale per 1x128
// group (fp8-block: each group's own; fp8-channel: the row's, repeated; fp8-tensor: the static
// input scale, repeated), so that the three feed the same block-scaled GEMMs —; hidden scaled by
// row_weight, llama4's weight on the input, when row_weight is set; else hidden itself.
struct ExpertInput {
  Tensor rows;    // [M, K] bf16 or e4m3
  Tensor scales;  // f32 [M, K/128] (fp8 schemes), undefined otherwise
};
size_t expert_input_bytes(const MoEConfig& config, int64_t M);
// static_scale: fp8-tensor's input scale (weights.a13_scale, device f32 [1]); checked here. after_router: the
// last launch on the stream is fusedmoe's router (ModularPrepareFinalize::prepare); an fp8 quantizer that needs no
// router weight then runs beside it (launch_quantize_fp8_block's beside_previous).
ExpertInput make_expert_input(const MoEConfig& config, const Tensor& hidden, const float* row_weight,
                              const Tensor& static_scale, Workspace& ws, bool after_router = false);
// The batched format's activations (kernels/batched.cu): the rows of an ExpertInput packed by
// their ids [M, k] into [E_local, T, K], T = max_tokens_per_expert. A token's rows take at most
// one place per local expert, so M <= T always fits (the caller checks it).
struct BatchedInput {
  Tensor rows;    // [E_local, T, K] bf16 or e4m3; rows past an expert's count are not written
  Tensor scales;  // f32 [E_local, T, K/128] (fp8 schemes), undefined otherwise
  Tensor counts;  // i32 [E_local]: rows used in each expert's batch
};
size_t batched_input_bytes(const MoEConfig& config);
// expert_map: device global -> local (null: every expert local). slot_pos: device i32 [M, k] the
// caller provides, set to each (token, slot)'s batch row (-1: no local expert).
BatchedInput make_batched_input(const MoEConfig& config, const ExpertInput& in, const Tensor& ids,
                                const int32_t* expert_map, int32_t* slot_pos, Workspace& ws);

// prepare_finalize_ep_cuda.cpp: the all-to-all / all-gather PrepareFinalize over `comm`, or the
// all-gather one of the monolithic experts.
std::unique_ptr<PrepareFinalize> make_ep_prepare_finalize(const MoEConfig& config, const Communicator& comm,
                                                          Device device, bool monolithic);
void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights);

// The schemes and shapes the CUDA experts run; throws fusedmoe::Error naming what is supported.
void check_supported(const MoEConfig& config);
// Monolithic experts and their PrepareFinalize take the standard format only.
void check_monolithic_format(const MoEConfig& config);

}  // namespace fusedmoe::cuda
