// CPU experts: modular standard (per-slot output), modular batched, and monolithic (routes
// with the shared router, quantizes like the modular prepare, runs the same MLP pipeline and
// reduces like the modular finalize, so both paths give identical bits).
#include <vector>

#include "core/weight_layout.h"
#include "cpu/cpu_backend.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cpu {
namespace {

class CpuExpertsBase {
 public:
  CpuExpertsBase(const MoEConfig& config, const ExpertWeights& weights) : config_(config), weights_(weights) {
    FMOE_CHECK(weights.w13.device() == Device::cpu(), "the CPU experts need weights on the CPU, got ",
               weights.w13.device().str());
    check_checkpoint_fp4_packing(weights, "the CPU experts");
  }

 protected:
  MoEConfig config_;
  ExpertWeights weights_;
};

class CpuExperts final : public ModularExperts, CpuExpertsBase {
 public:
  using CpuExpertsBase::CpuExpertsBase;
  std::string name() const override { return "cpu.Experts"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return Device::cpu(); }
  Tensor static_input_scale() const override { return weights_.a13_scale; }
  size_t workspace_bytes(int64_t M) const override {
    const int64_t k = config_.routing.top_k, R = M * k;
    return workspace_tensor_bytes(DType::f32, {M, k, config_.hidden_size}) + row_plan_bytes(config_, R) +
           expert_mlp_bytes(config_, R);
  }
  ExpertsOutput apply(const PreparedActivations& in, Workspace& workspace) const override {
    const int64_t M = in.topk_ids.size(0);
    const Tensor output = workspace.take(DType::f32, {M, config_.routing.top_k, config_.hidden_size});
    const RowPlan plan = plan_rows_by_expert(config_, in.topk_ids, workspace);
    run_expert_mlp(config_, weights_, in.a1q, in.a1q_scale, plan, output.data_as<float>(), workspace);
    return {ExpertsOutputKind::per_slot, output, {}};
  }
};

class CpuBatchedExperts final : public ModularExperts, CpuExpertsBase {
 public:
  using CpuExpertsBase::CpuExpertsBase;
  std::string name() const override { return "cpu.BatchedExperts"; }
  ActivationFormat activation_format() const override { return ActivationFormat::batched; }
  Device device() const override { return Device::cpu(); }
  Tensor static_input_scale() const override { return weights_.a13_scale; }
  size_t workspace_bytes(int64_t) const override {
    const int64_t E = config_.num_local_experts(), T = config_.max_tokens_per_expert, R = E * T;
    return workspace_tensor_bytes(DType::f32, {E, T, config_.hidden_size}) + row_plan_bytes(config_, R) +
           expert_mlp_bytes(config_, R);
  }
  ExpertsOutput apply(const PreparedActivations& in, Workspace& workspace) const override {
    const int64_t E = config_.num_local_experts(), T = config_.max_tokens_per_expert;
    const Tensor output = workspace.take(DType::f32, {E, T, config_.hidden_size});
    int64_t* offsets = workspace.take(DType::i64, {E + 1}).data_as<int64_t>();
    int64_t* rows = workspace.take(DType::i64, {E * T}).data_as<int64_t>();
    workspace.take(DType::i64, {E * T});  // keeps the layout of row_plan_bytes
    const int32_t* counts = in.expert_num_tokens.data_as<const int32_t>();
    offsets[0] = 0;
    for (int64_t e = 0; e < E; ++e) {
      FMOE_CHECK(counts[e] >= 0 && counts[e] <= T, "expert_num_tokens[", e, "] must be in [0, ", T, "], got ",
                 counts[e]);
      offsets[e + 1] = offsets[e] + counts[e];
      for (int64_t i = 0; i < counts[e]; ++i) rows[offsets[e] + i] = e * T + i;
    }
    // Batch row e*T+i is both the input and the output row.
    const RowPlan plan{offsets, rows, rows, offsets[E]};
    const int64_t K = config_.hidden_size, G = activation_scale_cols(config_.quant, K);
    const Tensor flat_in(in.a1q.data(), in.a1q.dtype(), {E * T, K});
    const Tensor flat_scales = G > 0 ? Tensor(in.a1q_scale.data(), DType::f32, {E * T, G}) : Tensor();
    run_expert_mlp(config_, weights_, flat_in, flat_scales, plan, output.data_as<float>(), workspace);
    return {ExpertsOutputKind::batched, output, {}};
  }
};

class CpuMonolithicExperts final : public MonolithicExperts, CpuExpertsBase {
 public:
  using CpuExpertsBase::CpuExpertsBase;
  std::string name() const override { return "cpu.MonolithicExperts"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return Device::cpu(); }
  size_t workspace_bytes(int64_t M) const override {
    const int64_t k = config_.routing.top_k, K = config_.hidden_size, R = M * k;
    return 2 * workspace_tensor_bytes(DType::i32, {M, k}) + quantized_rows_bytes(config_, M) +
           workspace_tensor_bytes(DType::f32, {M, k, K}) + row_plan_bytes(config_, R) + expert_mlp_bytes(config_, R);
  }
  void apply_monolithic(const Tensor& hidden, const Tensor& router_logits, const Tensor& output,
                        Workspace& workspace) const override {
    const int64_t M = hidden.size(0), k = config_.routing.top_k, K = config_.hidden_size;
    const Tensor ids = workspace.take(DType::i32, {M, k});
    const Tensor weights = workspace.take(DType::f32, {M, k});
    cpu::route(config_.routing, router_logits, ids, weights);
    const QuantizedRows rows = quantize_input_rows(config_, hidden, weights, weights_.a13_scale, workspace);
    const Tensor per_slot = workspace.take(DType::f32, {M, k, K});
    const RowPlan plan = plan_rows_by_expert(config_, ids, workspace);
    run_expert_mlp(config_, weights_, rows.data, rows.scales, plan, per_slot.data_as<float>(), workspace);
    reduce_per_slot(config_, per_slot, ids, weights, output);
  }
};

}  // namespace

std::unique_ptr<Experts> make_experts(const MoEConfig& config, const ExpertWeights& weights, bool monolithic) {
  if (monolithic) {
    FMOE_CHECK(config.activation_format == ActivationFormat::standard,
               "monolithic experts take tokens x hidden (standard format), got the batched format");
    FMOE_CHECK(config.routing.method != RoutingMethod::precomputed,
               "monolithic experts route the logits themselves; routing method 'precomputed' needs modular experts");
    return std::make_unique<CpuMonolithicExperts>(config, weights);
  }
  if (config.activation_format == ActivationFormat::batched) return std::make_unique<CpuBatchedExperts>(config, weights);
  return std::make_unique<CpuExperts>(config, weights);
}

}  // namespace fusedmoe::cpu
