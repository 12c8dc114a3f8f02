// The activation rows the CUDA experts read, made from hidden bf16 [M, K] on the current
// stream: e4m3 with f32 scales per 1x128 group for the fp8 schemes (see cuda_backend.h), llama4's
// router weight applied on the input (row_weight), or hidden itself. Shared by every CUDA
// PrepareFinalize and the monolithic experts. And the same rows packed into the batched format's
// [E_local, T, K] batches.
#include "core/check.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"

namespace fusedmoe::cuda {

size_t expert_input_bytes(const MoEConfig& c, int64_t M) {
  const int64_t K = c.hidden_size;
  if (scheme_quantizes_activations(c.quant))
    return workspace_tensor_bytes(DType::fp8_e4m3, {M, K}) + workspace_tensor_bytes(DType::f32, {M, K / 128});
  return c.apply_router_weight_on_input() ? workspace_tensor_bytes(DType::bf16, {M, K}) : 0;
}

ExpertInput make_expert_input(const MoEConfig& c, const Tensor& hidden, const float* row_weight,
                              const Tensor& static_scale, Workspace& ws, bool after_router) {
  const int64_t M = hidden.size(0), K = c.hidden_size;
  ExpertInput in;
  if (scheme_quantizes_activations(c.quant)) {
    in.rows = ws.take(DType::fp8_e4m3, {M, K});
    in.scales = ws.take(DType::f32, {M, K / 128});
    const bf16* x = hidden.data_as<const bf16>();
    // The router's weights are its output: a quantizer that reads them waits for it.
    const bool beside = after_router && !row_weight;
    if (c.quant == QuantScheme::fp8_per_channel) {
      launch_quantize_fp8_rows(x, M, K, row_weight, in.rows.data_as<fp8>(), in.scales.data_as<float>(), stream(),
                               beside);
    } else {
      const bool per_tensor = c.quant == QuantScheme::fp8_per_tensor;
      if (per_tensor)
        check_tensor(static_scale, "the static input scale (weights.a13_scale)", DType::f32, {1}, hidden.device());
      if (M) launch_quantize_fp8_block(x, M, K, row_weight, per_tensor ? static_scale.data_as<const float>() : nullptr,
                                       in.rows.data_as<fp8>(), in.scales.data_as<float>(), stream(), beside);
    }
  } else if (row_weight) {
    in.rows = ws.take(DType::bf16, {M, K});
    if (M) launch_scale_rows(hidden.data_as<const bf16>(), M, K, row_weight, in.rows.data_as<bf16>(), stream());
  } else {
    in.rows = hidden;
  }
  return in;
}

size_t batched_input_bytes(const MoEConfig& c) {
  const int64_t E = c.num_local_experts(), T = c.max_tokens_per_expert, K = c.hidden_size;
  const bool fp8 = scheme_quantizes_activations(c.quant);
  return workspace_tensor_bytes(fp8 ? DType::fp8_e4m3 : DType::bf16, {E, T, K}) +
         (fp8 ? workspace_tensor_bytes(DType::f32, {E, T, K / 128}) : 0) + workspace_tensor_bytes(DType::i32, {E});
}

BatchedInput make_batched_input(const MoEConfig& c, const ExpertInput& in, const Tensor& ids,
                                const int32_t* expert_map, int32_t* slot_pos, Workspace& ws) {
  const int64_t M = ids.size(0), k = ids.size(1), E = c.num_local_experts(), T = c.max_tokens_per_expert;
  const int64_t K = c.hidden_size, G = in.scales.defined() ? K / 128 : 0;
  BatchedInput b;
  b.rows = ws.take(in.rows.dtype(), {E, T, K});
  if (G) b.scales = ws.take(DType::f32, {E, T, G});
  b.counts = ws.take(DType::i32, {E});
  launch_batch_slots(ids.data_as<const int32_t>(), M, static_cast<int>(k), static_cast<int>(c.num_experts), expert_map,
                     static_cast<int>(E), T, slot_pos, b.counts.data_as<int32_t>(), stream());
  launch_batch_pack(in.rows.data(), K * static_cast<int64_t>(dtype_size(in.rows.dtype())),
                    G ? in.scales.data_as<const float>() : nullptr, G, slot_pos, M, static_cast<int>(k), b.rows.data(),
                    G ? b.scales.data_as<float>() : nullptr, stream());
  return b;
}

}  // namespace fusedmoe::cuda
