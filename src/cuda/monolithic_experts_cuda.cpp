// CUDA monolithic experts: router logits in, the layer's output out, as a short chain on the current
// stream: route+plan in one single-block kernel where its small block covers the batch
// (choose_route_plan_kernel: up to 8 tokens; the route and plan kernels above), the input
// quantization (fp8-block), the modular experts' GEMM pipeline on that plan, and the weighted top-k
// reduce straight into the output. bf16 decode batches of up to kMaxFusedDecodeTokens tokens with large
// experts (choose_fused_decode; FUSEDMOE_FUSED_DECODE=1 / 0 forces it on / off) in two launches, route+plan
// and the fused decode kernel (decode_fused.cu: both GEMMs, the activation and the weighted reduce; the modular
// experts run it too, without the reduce).
// Routing runs route_token_warp, the modular router's device code, so the two paths pick the same experts
// and give the same bits.
#include <algorithm>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/experts_cuda.h"
#include "cuda/heuristics.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cuda {
namespace {

class CudaMonolithicExperts final : public MonolithicExperts {
 public:
  CudaMonolithicExperts(const MoEConfig& config, const ExpertWeights& weights)
      : config_(config), experts_(config, weights) {
    FMOE_CHECK(config.routing.method != RoutingMethod::precomputed,
               "monolithic experts route the logits themselves; the routing method 'precomputed' needs the modular ",
               "experts (use_monolithic=false)");
    FMOE_CHECK(config.num_experts <= kMaxRouterExperts, "the CUDA monolithic experts route up to ",
               kMaxRouterExperts, " experts, got ", config.num_experts);
    if (config.routing.correction_bias.defined())
      FMOE_CHECK(config.routing.correction_bias.device() == experts_.device(), "routing.correction_bias must be on ",
                 experts_.device().str(), " with the weights, got ", config.routing.correction_bias.describe());
    // The fused decode kernel runs after the route+plan kernel, which zeroes its counters.
    route_plan_fits_ = config.num_experts <= kMaxRoutePlanExperts;
  }

  std::string name() const override {
    return std::string("cuda.MonolithicExperts[") + quant_scheme_name(config_.quant) + "]";
  }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return experts_.device(); }

  size_t workspace_bytes(int64_t M) const override {
    const int64_t k = config_.routing.top_k;
    return workspace_tensor_bytes(DType::i32, {M, k}) + workspace_tensor_bytes(DType::f32, {M, k}) +
           expert_input_bytes(config_, M) + experts_.workspace_bytes(M);
  }

  void apply_monolithic(const Tensor& hidden, const Tensor& router_logits, const Tensor& output,
                        Workspace& ws) const override {
    DeviceGuard guard(device());
    const cudaStream_t s = stream();
    const int64_t M = hidden.size(0), k = config_.routing.top_k;
    if (M == 0) return;
    const Tensor ids = ws.take(DType::i32, {M, k});
    const Tensor weights = ws.take(DType::f32, {M, k});
    PlanBuffers planned = experts_.take_plan(M, ws);
    const RoutingParams params = make_routing_params(config_.routing, config_.num_experts);
    const bool bf16_logits = router_logits.dtype() == DType::bf16;
    const int num_local = static_cast<int>(experts_.num_local());
    // bf16 decode batches with large experts: route+plan (zeroing the fused decode kernel's counters), then that
    // kernel, the reduce included.
    const bool fused = route_plan_fits_ && experts_.fused_decode_runs(M);
    const Tensor counters = fused ? experts_.prepare_fused_decode(M, planned, ws) : Tensor{};
    const bool route_plan =
        fused || choose_route_plan_kernel(M, static_cast<int>(k), num_local, static_cast<int>(config_.num_experts));
    // llama4 has top_k == 1: token t's weight is weights[t], applied on the input.
    const bool on_input = config_.apply_router_weight_on_input();
    const float* topk_weights = on_input ? nullptr : weights.data_as<const float>();
    // The fp8 activation quantizer, when it needs no routing, goes first and the route+plan kernel runs beside it
    // (launch_route_plan's beside_previous): the quantizer's ~1.6 us leave deepseek-v3's decode chain.
    const bool input_first = route_plan && !on_input && scheme_quantizes_activations(config_.quant);
    ExpertInput in;
    if (input_first) in = make_expert_input(config_, hidden, nullptr, experts_.weights().a13_scale, ws);
    if (route_plan) {
      launch_route_plan(params, router_logits.data(), bf16_logits, M, experts_.device_expert_map(), num_local,
                        ids.data_as<int32_t>(), weights.data_as<float>(), planned.plan, s,
                        fused ? counters.data_as<int32_t>() : nullptr, fused ? counters.numel() : 0, input_first,
                        choose_block_router(M));
    } else {
      launch_route(params, router_logits.data(), bf16_logits, M, ids.data_as<int32_t>(), weights.data_as<float>(), s,
                   choose_block_router(M));
      launch_plan(ids.data_as<const int32_t>(), M, static_cast<int>(k), static_cast<int>(config_.num_experts),
                  experts_.device_expert_map(), num_local, planned.plan, planned.scratch, s);
    }
    if (!input_first)
      in = make_expert_input(config_, hidden, on_input ? weights.data_as<const float>() : nullptr,
                             experts_.weights().a13_scale, ws);
    if (fused) {
      experts_.run_fused_decode(in.rows, planned, counters, topk_weights, output.data_as<bf16>(), ws);
      return;
    }
    PreparedActivations prepared;
    prepared.a1q = in.rows;
    prepared.a1q_scale = in.scales;
    prepared.topk_ids = ids;
    prepared.topk_weights = weights;
    const ExpertsOutput out = experts_.run_planned(prepared, planned, ws);
    launch_finalize(out.rows.data_as<const bf16>(), out.slot_rows.data_as<const int32_t>(), topk_weights, M,
                    static_cast<int>(k), config_.hidden_size, output.data_as<bf16>(), s,
                    /*settled: routed and planned before the GEMMs*/ true);
  }

 private:
  MoEConfig config_;
  CudaExperts experts_;
  bool route_plan_fits_ = false;
};

}  // namespace

std::unique_ptr<Experts> make_monolithic_experts(const MoEConfig& config, const ExpertWeights& weights) {
  check_monolithic_format(config);
  return std::make_unique<CudaMonolithicExperts>(config, weights);
}

}  // namespace fusedmoe::cuda
