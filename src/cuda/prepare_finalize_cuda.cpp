// CUDA PrepareFinalize without expert parallelism. prepare: llama4's router weight on the
// input, fp8 1x128 quantization for fp8-block (bf16 passes through untouched). finalize: the
// deterministic weighted top-k reduce of the experts' grouped rows. The monolithic one moves
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

class PrepareFinalizeNoEP final : public ModularPrepareFinalize {
 public:
  explicit PrepareFinalizeNoEP(const MoEConfig& config) : config_(config), device_(current_device()) {
    require_sm90(device_, "the CUDA PrepareFinalize");
    check_supported(config);
  }
  std::string name() const override { return "cuda.PrepareFinalizeNoEP"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return device_; }

  size_t workspace_bytes(int64_t M) const override { return expert_input_bytes(config_, M); }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor&, Workspace& ws) const override {
    DeviceGuard guard(device_);
    // llama4 has top_k == 1, so row t's weight is topk_weights[t].
    const float* row_weight = config_.apply_router_weight_on_input() ? topk_weights.data_as<const float>() : nullptr;
    const ExpertInput in = make_expert_input(config_, hidden, row_weight, ws);
    PreparedActivations p;
    p.format = ActivationFormat::standard;
    p.a1q = in.rows;
    p.a1q_scale = in.scales;
    p.topk_ids = topk_ids;
    p.topk_weights = topk_weights;
    return p;
  }

  void finalize(const ExpertsOutput& out, const PreparedActivations& prepared, const Tensor& output,
                Workspace&) const override {
    FMOE_CHECK(out.kind == ExpertsOutputKind::sorted && out.rows.dtype() == DType::bf16, name(),
               " finalizes the CUDA experts' grouped bf16 rows only");
    DeviceGuard guard(device_);
    const int64_t M = prepared.topk_ids.size(0);
    const float* weights =
        config_.apply_router_weight_on_input() ? nullptr : prepared.topk_weights.data_as<const float>();
    launch_finalize(out.rows.data_as<const bf16>(), out.slot_rows.data_as<const int32_t>(), weights, M,
                    config_.routing.top_k, config_.hidden_size, output.data_as<bf16>(), stream());
  }

 private:
  MoEConfig config_;
  Device device_;
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
