// Factories: choose a PrepareFinalize and an Experts implementation for a config and backend.
#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "fusedmoe/comm.h"
#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/kernel.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/weights.h"

namespace fusedmoe {

enum class Backend : uint8_t {
  auto_select,  // the backend of the weights' device (make_prepare_finalize: the CPU)
  cpu,
  cuda,  // Hopper (sm_90a) kernels; present when the library was built with CUDA
};

const char* backend_name(Backend backend);
// True when the backend is compiled in and can run here (CUDA: a Hopper GPU is present).
bool backend_available(Backend backend);
std::optional<Backend> parse_backend(std::string_view name);

// Without a communicator (or with one of size 1): the no-expert-parallelism PrepareFinalize
// (standard or batched per config.activation_format; monolithic moves data only).
std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool use_monolithic, Backend backend = Backend::auto_select);

// Experts for the config on the backend; validates the config and the weights. The weights
// are views: their storage must outlive the experts.
std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, Backend backend,
                                      bool use_monolithic);

struct KernelOptions {
  Backend backend = Backend::auto_select;
  bool use_monolithic = false;
  const Communicator* communicator = nullptr;
};

FusedMoEKernel make_kernel(const MoEConfig& config, const ExpertWeights& weights, const KernelOptions& options = {});

}  // namespace fusedmoe
