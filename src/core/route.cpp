// route(): validates the arguments, then runs the router of the logits' backend.
#include "core/backend_registry.h"
#include "core/check.h"
#include "fusedmoe/error.h"
#include "fusedmoe/routing.h"

namespace fusedmoe {

void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights) {
  FMOE_CHECK(config.method != RoutingMethod::precomputed,
             "route() needs a routing method that computes ids; 'precomputed' means the caller supplies them");
  FMOE_CHECK(logits.defined() && logits.ndim() == 2, "router_logits must be a 2-D [M, E] tensor, got ",
             logits.describe());
  FMOE_CHECK(logits.dtype() == DType::f32 || logits.dtype() == DType::bf16,
             "router_logits must be f32 or bf16, got ", dtype_name(logits.dtype()));
  const int64_t M = logits.size(0), E = logits.size(1);
  check_tensor(logits, "router_logits", logits.dtype(), {M, E}, logits.device());
  MoEConfig shape_check;
  shape_check.num_experts = E;
  shape_check.hidden_size = 1;
  shape_check.intermediate_size = 1;
  shape_check.routing = config;
  validate_config(shape_check);
  check_tensor(topk_ids, "topk_ids", DType::i32, {M, config.top_k}, logits.device());
  check_tensor(topk_weights, "topk_weights", DType::f32, {M, config.top_k}, logits.device());
  backend_for_device(logits.device()).route(config, logits, topk_ids, topk_weights);
}

}  // namespace fusedmoe
