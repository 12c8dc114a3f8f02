// FusedMoEKernel: the public entry point. Owns one PrepareFinalize and one Experts, checks at
// construction that they fit together, sizes the workspace and runs prepare -> experts -> finalize.
#pragma once

#include <cstdint>
#include <memory>

#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/prepare_finalize.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/workspace.h"

namespace fusedmoe {

class FusedMoEKernel {
 public:
  FusedMoEKernel(const MoEConfig& config, std::unique_ptr<PrepareFinalize> prepare_finalize,
                 std::unique_ptr<Experts> experts);

  bool is_monolithic() const { return experts_->is_monolithic(); }
  // True under expert parallelism: every rank must call, also with zero tokens.
  bool is_collective() const { return prepare_finalize_->num_dispatchers() > 1; }
  const MoEConfig& config() const { return config_; }
  const PrepareFinalize& prepare_finalize() const { return *prepare_finalize_; }
  const Experts& experts() const { return *experts_; }
  Device device() const { return experts_->device(); }

  // Workspace bytes for apply / apply_monolithic / forward with up to `num_tokens` tokens.
  size_t workspace_bytes(int64_t num_tokens) const;

  // Modular: hidden bf16 [M, K], topk_ids i32 [M, k], topk_weights f32 [M, k] -> out bf16 [M, K].
  // `workspace` (u8 [>= workspace_bytes(M)]) is optional; without it the call allocates.
  void apply(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights, const Tensor& out,
             const Tensor& workspace = {}) const;

  // Monolithic: hidden bf16 [M, K], router_logits f32/bf16 [M, E] -> out bf16 [M, K].
  void apply_monolithic(const Tensor& hidden, const Tensor& router_logits, const Tensor& out,
                        const Tensor& workspace = {}) const;

  // Either path from router logits: routes then applies (modular) or applies monolithically.
  void forward(const Tensor& hidden, const Tensor& router_logits, const Tensor& out,
               const Tensor& workspace = {}) const;

 private:
  // after_router: forward() launched the router just before (ModularPrepareFinalize::prepare).
  void run_modular(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights, bool after_router,
                   const Tensor& out, Workspace& workspace) const;

  MoEConfig config_;
  std::unique_ptr<PrepareFinalize> prepare_finalize_;
  std::unique_ptr<Experts> experts_;
};

}  // namespace fusedmoe
