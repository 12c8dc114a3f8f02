// MoEConfig: everything that fixes the shape and semantics of one MoE layer.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "fusedmoe/quant.h"
#include "fusedmoe/routing.h"
#include "fusedmoe/tensor.h"

namespace fusedmoe {

enum class ActivationKind : uint8_t {
  silu_mul,       // silu(gate) * up, w13 rows = [gate rows | up rows]
  gelu_mul,       // gelu(gate) * up (erf form)
  gelu_tanh_mul,  // gelu_tanh(gate) * up
  swiglu_oai,     // gpt-oss: w13 rows interleaved (g0,u0,g1,u1,...);
                  // g=min(g,limit), u=clamp(u,-limit,limit), (u+1)*g*sigmoid(alpha*g)
  relu2,          // non-gated: relu(x)^2, w13 has I rows
};

struct Activation {
  ActivationKind kind = ActivationKind::silu_mul;
  float alpha = 1.702f;  // swiglu_oai only
  float limit = 7.0f;    // swiglu_oai only
  bool is_gated() const { return kind != ActivationKind::relu2; }
};

const char* activation_name(ActivationKind kind);
std::optional<ActivationKind> parse_activation(std::string_view name);

enum class ActivationFormat : uint8_t {
  standard,  // tokens x hidden, with top-k ids
  batched,   // local experts x max tokens per expert x hidden, with per-expert counts
};

// How the modular expert-parallel PrepareFinalize moves tokens (ep_size > 1).
enum class EpDispatch : uint8_t {
  all_to_all,  // each token to the ranks owning its experts; partial sums come back (default)
  all_gather,  // naive DP/EP: every rank gathers every token, results are reduce-scattered
};

struct ParallelConfig {
  int ep_size = 1;
  int ep_rank = 0;
  int dp_size = 1;
  // Optional i32 [num_experts] on the host: global expert -> local slot, -1 when not local.
  // Every local slot 0..num_local_experts-1 must appear exactly once. Required when
  // ep_size > 1 (contiguous_expert_map() in comm.h gives the default placement).
  Tensor expert_map;
  // ep_size > 1: the most tokens any rank passes in one call; sizes the exchange buffers.
  int64_t max_tokens_per_rank = 0;
  EpDispatch ep_dispatch = EpDispatch::all_to_all;
  // GPU ranks: every call first all-gathers the ranks' token counts and waits for them on the host,
  // so a rank over max_tokens_per_rank fails with the same error on every rank, before any token
  // moves. It costs a host synchronisation per call and cannot run inside CUDA-graph capture (a
  // clear error there). Off (default): no host synchronisation; the offending rank fails at once,
  // before it communicates, and its peers' next collective ends in the communicator's timeout
  // error. CPU ranks always check every rank.
  bool capacity_check_all_ranks = false;
};

struct MoEConfig {
  int64_t num_experts = 0;        // global E
  int64_t hidden_size = 0;        // K
  int64_t intermediate_size = 0;  // I (w13 has 2I rows when gated)
  Activation activation;
  QuantScheme quant = QuantScheme::bf16;
  RoutingConfig routing;
  ParallelConfig parallel;
  ActivationFormat activation_format = ActivationFormat::standard;
  // Batched format: capacity of each expert's batch. The CPU checks the rows each expert gets; the
  // GPU keeps those counts on the device and needs capacity for every token that can reach it
  // (>= the call's tokens; >= ranks x parallel.max_tokens_per_rank under expert parallelism).
  int64_t max_tokens_per_expert = 0;
  // Top-k ids outside [0, num_experts) (-1 masked slots, stale ids in padded rows) contribute
  // nothing by default, on every backend. With strict_expert_ids the CPU rejects them instead.
  bool strict_expert_ids = false;

  int64_t w13_rows() const { return activation.is_gated() ? 2 * intermediate_size : intermediate_size; }
  int64_t num_local_experts() const;
  bool apply_router_weight_on_input() const { return routing.method == RoutingMethod::llama4; }
};

// Throws fusedmoe::Error naming the first field that is out of range.
void validate_config(const MoEConfig& config);

}  // namespace fusedmoe
