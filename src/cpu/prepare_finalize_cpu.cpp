// CPU PrepareFinalize without expert parallelism: standard and batched (modular) and the
// monolithic one, which moves no data at all.
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cpu {

BatchedOverflow find_batched_overflow(const MoEConfig& c, const Tensor& topk_ids) {
  const int64_t n = topk_ids.numel(), E = c.num_local_experts();
  const int32_t* ids = topk_ids.data_as<const int32_t>();
  const int32_t* map = c.parallel.expert_map.defined() ? c.parallel.expert_map.data_as<const int32_t>() : nullptr;
  std::vector<int64_t> counts(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < n; ++i)
    if (const int32_t e = local_expert_of(ids[i], c.num_experts, map); e >= 0) ++counts[e];
  for (int64_t e = 0; e < E; ++e)
    if (counts[e] > c.max_tokens_per_expert) return {e, counts[e]};
  return {};
}

size_t batched_rows_bytes(const MoEConfig& c) {
  const int64_t E = c.num_local_experts(), T = c.max_tokens_per_expert, K = c.hidden_size;
  const int64_t G = activation_scale_cols(c.quant, K);
  const DType dtype = scheme_quantizes_activations(c.quant) ? DType::fp8_e4m3 : DType::bf16;
  return workspace_tensor_bytes(dtype, {E, T, K}) + workspace_tensor_bytes(DType::f32, {E, T, G}) +
         workspace_tensor_bytes(DType::i32, {E});
}

PreparedActivations pack_batched(const MoEConfig& c, const QuantizedRows& rows, const Tensor& topk_ids,
                                 const Tensor& topk_weights, Workspace& workspace) {
  const int64_t M = topk_ids.size(0), k = topk_ids.size(1), K = c.hidden_size;
  const int64_t E = c.num_local_experts(), T = c.max_tokens_per_expert, G = activation_scale_cols(c.quant, K);
  const int32_t* ids = topk_ids.data_as<const int32_t>();
  const int32_t* map = c.parallel.expert_map.defined() ? c.parallel.expert_map.data_as<const int32_t>() : nullptr;
  const DType dtype = scheme_quantizes_activations(c.quant) ? DType::fp8_e4m3 : DType::bf16;
  PreparedActivations p;
  p.format = ActivationFormat::batched;
  p.topk_ids = topk_ids;  // finalize finds each slot's batch row from them
  p.topk_weights = topk_weights;
  p.a1q = workspace.take(dtype, {E, T, K});
  p.a1q_scale = workspace.take(DType::f32, {E, T, G});
  p.expert_num_tokens = workspace.take(DType::i32, {E});
  const size_t row_bytes = static_cast<size_t>(K) * dtype_size(dtype);
  std::vector<int64_t> fill(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < M * k; ++i) {
    const int32_t e = local_expert_of(ids[i], c.num_experts, map);
    if (e < 0) continue;
    const int64_t dst = e * T + fill[e]++, src = i / k;
    std::memcpy(p.a1q.data_as<uint8_t>() + dst * row_bytes, rows.data.data_as<const uint8_t>() + src * row_bytes,
                row_bytes);
    if (G > 0) std::copy_n(rows.scales.data_as<const float>() + src * G, G, p.a1q_scale.data_as<float>() + dst * G);
  }
  for (int64_t e = 0; e < E; ++e) p.expert_num_tokens.data_as<int32_t>()[e] = static_cast<int32_t>(fill[e]);
  return p;
}

namespace {

class PrepareFinalizeNoEP final : public ModularPrepareFinalize {
 public:
  explicit PrepareFinalizeNoEP(const MoEConfig& config) : config_(config) {}
  std::string name() const override { return "cpu.PrepareFinalizeNoEP"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return Device::cpu(); }
  size_t workspace_bytes(int64_t M) const override { return quantized_rows_bytes(config_, M); }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor& static_input_scale, bool, Workspace& workspace) const override {
    QuantizedRows rows = quantize_input_rows(config_, hidden, topk_weights, static_input_scale, workspace);
    PreparedActivations p;
    p.format = ActivationFormat::standard;
    p.a1q = rows.data;
    p.a1q_scale = rows.scales;
    p.topk_ids = topk_ids;
    p.topk_weights = topk_weights;
    return p;
  }

  void finalize(const ExpertsOutput& experts_output, const PreparedActivations& prepared, const Tensor& output,
                Workspace&) const override {
    FMOE_CHECK(experts_output.kind == ExpertsOutputKind::per_slot, name(), " finalizes per-slot expert outputs only");
    reduce_per_slot(config_, experts_output.rows, prepared.topk_ids, prepared.topk_weights, output);
  }

 private:
  MoEConfig config_;
};

// Batched format: [E_local, max_tokens_per_expert, K] with the tokens of each local expert
// in token-then-slot order; an expert over capacity is an error before anything is written.
class PrepareFinalizeBatched final : public ModularPrepareFinalize {
 public:
  explicit PrepareFinalizeBatched(const MoEConfig& config) : config_(config) {}
  std::string name() const override { return "cpu.PrepareFinalizeBatched"; }
  ActivationFormat activation_format() const override { return ActivationFormat::batched; }
  Device device() const override { return Device::cpu(); }

  size_t workspace_bytes(int64_t M) const override {
    return quantized_rows_bytes(config_, M) + batched_rows_bytes(config_);
  }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor& static_input_scale, bool, Workspace& workspace) const override {
    if (const BatchedOverflow o = find_batched_overflow(config_, topk_ids); o.expert >= 0)
      FMOE_FAIL("local expert ", o.expert, " received ", o.rows,
                " rows, over the batched capacity max_tokens_per_expert=", config_.max_tokens_per_expert);
    const QuantizedRows rows = quantize_input_rows(config_, hidden, topk_weights, static_input_scale, workspace);
    return pack_batched(config_, rows, topk_ids, topk_weights, workspace);
  }

  void finalize(const ExpertsOutput& experts_output, const PreparedActivations& prepared, const Tensor& output,
                Workspace&) const override {
    FMOE_CHECK(experts_output.kind == ExpertsOutputKind::batched, name(), " finalizes batched expert outputs only");
    reduce_batched(config_, experts_output.rows, prepared.topk_ids, prepared.topk_weights, output);
  }

 private:
  MoEConfig config_;
};

class PrepareFinalizeNoEPMonolithic final : public MonolithicPrepareFinalize {
 public:
  std::string name() const override { return "cpu.PrepareFinalizeNoEPMonolithic"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return Device::cpu(); }
  size_t workspace_bytes(int64_t) const override { return 0; }
  Prepared prepare(const Tensor& hidden, const Tensor& router_logits, Workspace&) const override {
    return {hidden, router_logits};
  }
  Tensor experts_output(const Tensor& output, int64_t, Workspace&) const override { return output; }
  void finalize(const Tensor&, const Tensor&, Workspace&) const override {}
};

}  // namespace

std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool monolithic) {
  if (communicator) return make_ep_prepare_finalize(config, *communicator, monolithic);
  if (monolithic) {
    FMOE_CHECK(config.activation_format == ActivationFormat::standard,
               "monolithic experts take tokens x hidden (standard format), got the batched format");
    return std::make_unique<PrepareFinalizeNoEPMonolithic>();
  }
  if (config.activation_format == ActivationFormat::batched) return std::make_unique<PrepareFinalizeBatched>(config);
  return std::make_unique<PrepareFinalizeNoEP>(config);
}

}  // namespace fusedmoe::cpu
