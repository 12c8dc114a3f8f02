// One randomized MoE configuration of the differential fuzzer, drawn from a single seed:
// shapes, scheme, activation, routing (with random parameters and skew), expert placement,
// stage kind, backend — and, for a share of the cases, one deliberate fault that must be
// refused with fusedmoe::Error. describe() prints the case on one line.
#pragma once

#include <cstdint>
#include <string>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::fuzz {

enum class MapKind : uint8_t { none, holes, permutation };

// Faults: each makes the call invalid in one way; the output must stay untouched.
enum class Fault : uint8_t {
  none,
  hidden_dtype,        // hidden is f32
  hidden_shape,        // hidden has K+1 columns
  strict_bad_id,       // an id out of range with strict_expert_ids (CPU)
  expert_map_twice,    // two experts mapped to the same local slot
  scale_shape,         // a weight-scale tensor with one block too few
  workspace_small,     // a workspace one byte short
  logits_dtype,        // router logits of dtype i32
  batched_overflow,    // batched capacity smaller than an expert's rows (CUDA: than the token count)
  top_k_too_large,     // top_k > num_experts
  misaligned_out,      // out 2 bytes off 16-byte alignment (CUDA)
};

struct FuzzCase {
  uint64_t seed = 0;
  Backend backend = Backend::cpu;
  int64_t tokens = 1, experts = 1, hidden = 64, intermediate = 64;
  int top_k = 1;
  QuantScheme quant = QuantScheme::bf16;
  ActivationKind activation = ActivationKind::silu_mul;
  RoutingMethod routing = RoutingMethod::softmax_topk;
  int groups = 1, topk_group = 1;
  bool renormalize = true;
  float scaling = 1.0f;
  bool correction_bias = false;
  float skew = 0.0f;  // 0: uniform logits; 1: every token's logits favour one expert strongly
  MapKind map = MapKind::none;
  bool monolithic = false;
  bool batched = false;
  bool bias = false;  // expert biases (w13_bias, w2_bias)
  int ep_ranks = 1;   // > 1: in-process expert-parallel ranks (CPU), contiguous placement
  EpDispatch ep_dispatch = EpDispatch::all_to_all;
  Fault fault = Fault::none;
};

// Bounds on the cost of one case: expert weight values, and tokens x top-k x weights MACs.
struct Budget {
  int64_t weight_values = 24'000'000;
  int64_t macs = 400'000'000;
};
// A budget for long campaigns (the 10,000-case GPU run): about 20x cheaper cases.
inline constexpr Budget kSmallBudget{2'000'000, 20'000'000};

// Draws the case of `seed` for `backend` (cpu or cuda): only what that backend runs.
FuzzCase draw_case(uint64_t seed, Backend backend, const Budget& budget = {});
std::string describe(const FuzzCase& c);
const char* fault_name(Fault f);

}  // namespace fusedmoe::fuzz
