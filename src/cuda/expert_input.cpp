// The activation rows the CUDA experts read, made from hidden bf16 [M, K] on the current
// stream: fp8 1x128 with f32 scales for fp8-block, llama4's router weight applied on the input
// (row_weight), or hidden itself. Shared by every CUDA PrepareFinalize and the monolithic experts.
#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"

namespace fusedmoe::cuda {

size_t expert_input_bytes(const MoEConfig& c, int64_t M) {
  const int64_t K = c.hidden_size;
  if (c.quant == QuantScheme::fp8_block)
    return workspace_tensor_bytes(DType::fp8_e4m3, {M, K}) + workspace_tensor_bytes(DType::f32, {M, K / 128});
  return c.apply_router_weight_on_input() ? workspace_tensor_bytes(DType::bf16, {M, K}) : 0;
}

ExpertInput make_expert_input(const MoEConfig& c, const Tensor& hidden, const float* row_weight, Workspace& ws) {
  const int64_t M = hidden.size(0), K = c.hidden_size;
  ExpertInput in;
  if (c.quant == QuantScheme::fp8_block) {
    in.rows = ws.take(DType::fp8_e4m3, {M, K});
    in.scales = ws.take(DType::f32, {M, K / 128});
    if (M) launch_quantize_fp8_block(hidden.data_as<const bf16>(), M, K, row_weight, in.rows.data_as<fp8>(),
                                     in.scales.data_as<float>(), stream());
  } else if (row_weight) {
    in.rows = ws.take(DType::bf16, {M, K});
    if (M) launch_scale_rows(hidden.data_as<const bf16>(), M, K, row_weight, in.rows.data_as<bf16>(), stream());
  } else {
    in.rows = hidden;
  }
  return in;
}

}  // namespace fusedmoe::cuda
