// PrepareFinalize: the stage around the experts. prepare quantizes (and, under expert
// parallelism, dispatches) activations; finalize weights, reduces (and combines) the outputs.
#pragma once

#include <cstdint>
#include <string>

#include "fusedmoe/config.h"
#include "fusedmoe/experts.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/workspace.h"

namespace fusedmoe {

class PrepareFinalize {
 public:
  virtual ~PrepareFinalize() = default;
  virtual std::string name() const = 0;
  virtual bool is_monolithic() const = 0;
  virtual ActivationFormat activation_format() const = 0;
  virtual Device device() const = 0;
  // Ranks that take part in every call (> 1: the call is collective, even with 0 tokens).
  virtual int num_dispatchers() const { return 1; }
  // Scratch bytes of prepare + finalize for `num_tokens` local tokens.
  virtual size_t workspace_bytes(int64_t num_tokens) const = 0;
  // The most rows prepare can hand the experts for `num_tokens` local tokens.
  virtual int64_t max_prepared_tokens(int64_t num_tokens) const { return num_tokens; }
};

class ModularPrepareFinalize : public PrepareFinalize {
 public:
  bool is_monolithic() const final { return false; }
  // hidden bf16 [M, K]; topk_ids i32 [M, k]; topk_weights f32 [M, k]; static_input_scale as
  // ModularExperts::static_input_scale(). Validated by the caller. after_router: the last launch on the
  // stream is fusedmoe's router (FusedMoEKernel::forward), which reads only the router logits and writes only
  // topk_ids and topk_weights; work that touches neither may then run beside it (the CUDA quantizer does).
  virtual PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                                      const Tensor& static_input_scale, bool after_router,
                                      Workspace& workspace) const = 0;
  // Weights (unless applied on the input) with prepared.topk_weights, reduces over top-k in slot
  // order (and, under expert parallelism, combines the ranks' partial sums), writes bf16 [M, K].
  virtual void finalize(const ExpertsOutput& experts_output, const PreparedActivations& prepared,
                        const Tensor& output, Workspace& workspace) const = 0;
};

class MonolithicPrepareFinalize : public PrepareFinalize {
 public:
  bool is_monolithic() const final { return true; }
  struct Prepared {
    Tensor hidden, router_logits;
  };
  // Moves data only: gathers hidden and logits from the ranks (identity without parallelism).
  virtual Prepared prepare(const Tensor& hidden, const Tensor& router_logits, Workspace& workspace) const = 0;
  // Where the experts write: `output` itself without parallelism.
  virtual Tensor experts_output(const Tensor& output, int64_t num_prepared_tokens, Workspace& workspace) const = 0;
  // Combines the experts' output into `output` (nothing to do without parallelism).
  virtual void finalize(const Tensor& experts_output, const Tensor& output, Workspace& workspace) const = 0;
};

}  // namespace fusedmoe
