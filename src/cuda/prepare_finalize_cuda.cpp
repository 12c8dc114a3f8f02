// CUDA PrepareFinalize without expert parallelism. prepare: llama4's router weight on the
// input, fp8 1x128 quantization for fp8-block (bf16 passes through untouched). finalize: the
// deterministic weighted top-k reduce of the experts' grouped rows.
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

  size_t workspace_bytes(int64_t M) const override {
    const int64_t K = config_.hidden_size;
    if (config_.quant == QuantScheme::fp8_block)
      return workspace_tensor_bytes(DType::fp8_e4m3, {M, K}) + workspace_tensor_bytes(DType::f32, {M, K / 128});
    return config_.apply_router_weight_on_input() ? workspace_tensor_bytes(DType::bf16, {M, K}) : 0;
  }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor&, Workspace& ws) const override {
    DeviceGuard guard(device_);
    const int64_t M = hidden.size(0), K = config_.hidden_size;
    // llama4 has top_k == 1, so row t's weight is topk_weights[t].
    const float* row_weight = config_.apply_router_weight_on_input() ? topk_weights.data_as<const float>() : nullptr;
    PreparedActivations p;
    p.format = ActivationFormat::standard;
    p.topk_ids = topk_ids;
    p.topk_weights = topk_weights;
    if (config_.quant == QuantScheme::fp8_block) {
      p.a1q = ws.take(DType::fp8_e4m3, {M, K});
      p.a1q_scale = ws.take(DType::f32, {M, K / 128});
      launch_quantize_fp8_block(hidden.data_as<const bf16>(), M, K, row_weight, p.a1q.data_as<fp8>(),
                                p.a1q_scale.data_as<float>(), stream());
    } else if (row_weight) {
      p.a1q = ws.take(DType::bf16, {M, K});
      launch_scale_rows(hidden.data_as<const bf16>(), M, K, row_weight, p.a1q.data_as<bf16>(), stream());
    } else {
      p.a1q = hidden;
    }
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

}  // namespace

std::unique_ptr<PrepareFinalize> make_prepare_finalize(const MoEConfig& config, const Communicator* communicator,
                                                       bool monolithic) {
  FMOE_CHECK(!monolithic, "monolithic CUDA experts are not built yet, so there is no monolithic CUDA ",
             "PrepareFinalize; use the modular path (use_monolithic=false)");
  if (!communicator) return std::make_unique<PrepareFinalizeNoEP>(config);
  const Device device = current_device();
  require_sm90(device, "the CUDA PrepareFinalize");
  check_supported(config);
  FMOE_CHECK(communicator->device().kind == DeviceKind::cuda, "expert parallelism on CUDA needs a GPU communicator ",
             "(make_nccl_communicator), got ", communicator->name(), " on ", communicator->device().str());
  return make_ep_prepare_finalize(config, *communicator, device);
}

}  // namespace fusedmoe::cuda
