// CUDA PrepareFinalize without expert parallelism. prepare: llama4's router weight on the
// input, fp8 quantization for the fp8 schemes (expert_input.cpp; bf16 passes through untouched), and for the
// batched format the packing into per-expert batches. finalize: the deterministic weighted top-k
// reduce of the experts' grouped (or batch) rows. The monolithic one moves
// nothing (the monolithic experts write the output).
#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cuda {
namespace {

Device current_device() {
  int index = 0;
  FMOE_CUDA_CHECK(cudaGetDevice(&index));
  return Device::cuda(index);
}

// Standard format: the prepared rows [M, K] and finalize over the experts' grouped rows.
// Batched format: the prepared rows packed into [E_local, T, K] batches (T =
// max_tokens_per_expert) on the device; finalize reduces the experts' batch rows through each
// slot's batch position (kept in PreparedActivations::dispatch). The host checks only M <= T —
// a token takes at most one row of an expert's batch — since the per-expert counts stay on the
// device.
class PrepareFinalizeNoEP final : public ModularPrepareFinalize {
 public:
  explicit PrepareFinalizeNoEP(const MoEConfig& config)
      : config_(config), device_(current_device()), batched_(config.activation_format == ActivationFormat::batched) {
    require_sm90(device_, "the CUDA PrepareFinalize");
    check_supported(config);
    if (batched_ && config.parallel.expert_map.defined()) expert_map_ = copy_to(config.parallel.expert_map, device_);
  }
  std::string name() const override { return batched_ ? "cuda.PrepareFinalizeBatched" : "cuda.PrepareFinalizeNoEP"; }
  ActivationFormat activation_format() const override { return config_.activation_format; }
  Device device() const override { return device_; }

  size_t workspace_bytes(int64_t M) const override {
    const size_t batch =
        batched_ ? batched_input_bytes(config_) + workspace_tensor_bytes(DType::i32, {M, config_.routing.top_k}) : 0;
    return expert_input_bytes(config_, M) + batch;
  }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor& static_input_scale, bool after_router, Workspace& ws) const override {
    const int64_t M = hidden.size(0), T = config_.max_tokens_per_expert;
    if (batched_)
      FMOE_CHECK(M <= T, name(), ": ", M, " tokens, over the batched capacity max_tokens_per_expert=", T,
                 " (on the GPU the capacity must cover every token: each can reach any expert)");
    DeviceGuard guard(device_);
    // llama4 has top_k == 1, so row t's weight is topk_weights[t].
    const float* row_weight = config_.apply_router_weight_on_input() ? topk_weights.data_as<const float>() : nullptr;
    const ExpertInput in = make_expert_input(config_, hidden, row_weight, static_input_scale, ws, after_router);
    PreparedActivations p;
    p.format = config_.activation_format;
    p.a1q = in.rows;
    p.a1q_scale = in.scales;
    p.topk_ids = topk_ids;
    p.topk_weights = topk_weights;
    if (batched_) {
      p.dispatch = ws.take(DType::i32, {M, config_.routing.top_k});
      const int32_t* map = expert_map_.view().defined() ? expert_map_.data_as<const int32_t>() : nullptr;
      const BatchedInput b = make_batched_input(config_, in, topk_ids, map, p.dispatch.data_as<int32_t>(), ws);
      p.a1q = b.rows;
      p.a1q_scale = b.scales;
      p.expert_num_tokens = b.counts;
    }
    return p;
  }

  void finalize(const ExpertsOutput& out, const PreparedActivations& prepared, const Tensor& output,
                Workspace&) const override {
    const ExpertsOutputKind kind = batched_ ? ExpertsOutputKind::batched : ExpertsOutputKind::sorted;
    FMOE_CHECK(out.kind == kind && out.rows.dtype() == DType::bf16, name(), " finalizes the CUDA experts' ",
               batched_ ? "batched" : "grouped", " bf16 rows only");
    DeviceGuard guard(device_);
    const int64_t M = prepared.topk_ids.size(0);
    const float* weights =
        config_.apply_router_weight_on_input() ? nullptr : prepared.topk_weights.data_as<const float>();
    const Tensor& slot_rows = batched_ ? prepared.dispatch : out.slot_rows;
    // settled: the plan (slot_rows) and the weights came before the experts' kernels
    launch_finalize(out.rows.data_as<const bf16>(), slot_rows.data_as<const int32_t>(), weights, M,
                    config_.routing.top_k, config_.hidden_size, output.data_as<bf16>(), stream(), true);
  }

 private:
  MoEConfig config_;
  Device device_;
  bool batched_;
  Buffer expert_map_;  // batched: the expert_map (global -> local) on the device
};

// Monolithic experts route, compute and reduce themselves: without expert parallelism this
// stage moves nothing and the experts write the caller's output.
class PrepareFinalizeNoEPMonolithic final : public MonolithicPrepareFinalize {
 public:
  explicit PrepareFinalizeNoEPMonolithic(Device device) : device_(device) {}
  std::string name() const override { return "cuda.PrepareFinalizeNoEPMonolithic"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return device_; }
  size_t workspace_bytes(int64_t) const override { return 0; }
  Prepared prepare(const Tensor& hidden, const Tensor& router_logits, Workspace&) const override {
    return {hidden, router_logits};
  }
  Tensor experts_output(const Tensor& output, int64_t, Workspace&) const override { return output; }
  void finalize(const Tensor&, const Tensor&, Workspace&) const override {}

 private:
  Device device_;
};

}  // namespace

std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool monolithic) {
  if (monolithic) check_monolithic_format(config);
  if (!communicator) {
    if (!monolithic) return std::make_unique<PrepareFinalizeNoEP>(config);
    const Device device = current_device();
    require_sm90(device, "the CUDA PrepareFinalize");
    check_supported(config);
    return std::make_unique<PrepareFinalizeNoEPMonolithic>(device);
  }
  const Device device = current_device();
  require_sm90(device, "the CUDA PrepareFinalize");
  check_supported(config);
  FMOE_CHECK(communicator->device().kind == DeviceKind::cuda, "expert parallelism on CUDA needs a GPU communicator ",
             "(make_nccl_communicator), got ", communicator->name(), " on ", communicator->device().str());
  return make_ep_prepare_finalize(config, *communicator, device, monolithic);
}

}  // namespace fusedmoe::cuda
