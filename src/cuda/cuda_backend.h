// Internal declarations of the CUDA backend (host side).
#pragma once

#include <memory>

#include "fusedmoe/comm.h"
#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/weights.h"

namespace fusedmoe::cuda {

std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, bool monolithic);
std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool monolithic);
// prepare_finalize_ep_cuda.cpp: the all-to-all / all-gather PrepareFinalize over `comm`.
std::unique_ptr<PrepareFinalize> make_ep_prepare_finalize(const MoEConfig& config, const Communicator& comm,
                                                          Device device);
void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights);

// The schemes and shapes the CUDA experts run; throws fusedmoe::Error naming what is supported.
void check_supported(const MoEConfig& config);

}  // namespace fusedmoe::cuda
