// Experts: the stage that runs the expert MLPs. Modular experts take prepared activations
// plus top-k ids/weights; monolithic experts take router logits and do routing, experts and
// the weighted reduce themselves.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fusedmoe/config.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/workspace.h"

namespace fusedmoe {

// Activations after PrepareFinalize::prepare.
struct PreparedActivations {
  ActivationFormat format = ActivationFormat::standard;
  // standard: [M, K]; batched: [E_local, max_tokens_per_expert, K]. bf16, or fp8_e4m3 when the
  // scheme quantizes activations.
  Tensor a1q;
  // f32 [..., activation_scale_cols(K)] for the fp8 schemes, undefined otherwise.
  Tensor a1q_scale;
  // batched only: i32 [E_local] rows used in each expert's batch.
  Tensor expert_num_tokens;
  // standard only: the top-k ids/weights of these rows (the caller's, or gathered/dispatched
  // from the other ranks; the weights already applied when the method applies them on the input).
  Tensor topk_ids, topk_weights;
  // PrepareFinalize-private bookkeeping that finalize needs (e.g. where dispatched rows came from).
  Tensor dispatch;
};

// What modular experts write, for PrepareFinalize::finalize to weight, reduce and combine.
enum class ExpertsOutputKind : uint8_t {
  per_slot,  // f32 [M, top_k, K]: unweighted output of each (token, slot); invalid slots unwritten
  batched,   // f32 (CPU) or bf16 (CUDA) [E_local, max_tokens_per_expert, K]: unweighted, in batch
             // order; rows past an expert's count are unspecified
  sorted,    // f32 or bf16 [R, K]: unweighted rows grouped by expert; slot_rows says where each
             // (token, slot) row is
};

struct ExpertsOutput {
  ExpertsOutputKind kind = ExpertsOutputKind::per_slot;
  Tensor rows;
  Tensor slot_rows;  // sorted only: i32 [M, top_k], the row of each slot, -1 where it contributes nothing
};

class Experts {
 public:
  virtual ~Experts() = default;
  virtual std::string name() const = 0;
  virtual bool is_monolithic() const = 0;
  virtual ActivationFormat activation_format() const = 0;
  virtual Device device() const = 0;
  // Scratch bytes one call needs for `num_tokens` tokens (the modular experts' output included).
  virtual size_t workspace_bytes(int64_t num_tokens) const = 0;
};

class ModularExperts : public Experts {
 public:
  bool is_monolithic() const final { return false; }
  // The checkpoint's static input-activation scale (fp8_per_tensor: f32 [1]) that prepare
  // quantizes with; undefined for the dynamic schemes.
  virtual Tensor static_input_scale() const { return {}; }
  // Runs the experts; the output (and, for `sorted`, slot_rows) is carved from `workspace`,
  // whose size workspace_bytes(M) includes it.
  virtual ExpertsOutput apply(const PreparedActivations& input, Workspace& workspace) const = 0;
};

class MonolithicExperts : public Experts {
 public:
  bool is_monolithic() const final { return true; }
  // hidden bf16 [M, K], router_logits f32/bf16 [M, E]; writes output bf16 [M, K].
  virtual void apply_monolithic(const Tensor& hidden, const Tensor& router_logits, const Tensor& output,
                                Workspace& workspace) const = 0;
};

}  // namespace fusedmoe
