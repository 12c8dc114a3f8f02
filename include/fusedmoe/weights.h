// ExpertWeights: views of one layer's local expert weights in a scheme's checkpoint layout,
// and the utility that converts bf16 weights into each layout.
//
// E = local experts, N1 = w13 rows (2I gated, I for relu2), K = hidden, I = intermediate.
// scheme          w13 / w2 data               w13_scale / w2_scale                 extra
// bf16            bf16 [E,N1,K] / [E,K,I]     -                                    -
// fp8_per_tensor  fp8  [E,N1,K] / [E,K,I]     f32 [E] / [E]                        a13_scale, a2_scale f32 [1]
// fp8_per_channel fp8  [E,N1,K] / [E,K,I]     f32 [E,N1] / [E,K]                   -
// fp8_block       fp8  [E,N1,K] / [E,K,I]     f32 [E,ceil(N1/128),ceil(K/128)] /
//                                             f32 [E,ceil(K/128),ceil(I/128)]      -
// nvfp4           fp4x2 [E,N1,K/2] / [E,K,I/2] fp8 [E,N1,K/16] / fp8 [E,K,I/16]    w13/w2_global_scale f32 [E]
// mxfp4           fp4x2 [E,N1,K/2] / [E,K,I/2] ue8m0 [E,N1,K/32] / ue8m0 [E,K,I/32] -
// Optional biases (any scheme): w13_bias f32 [E,N1], w2_bias f32 [E,K].
// fp4 data comes in the checkpoint's order (element 2i in the low nibble of byte i) or, after
// pack_fp4_weights_sm90, in the order the CUDA kernels read (fusedmoe/formats.h: the sm90 packing).
#pragma once

#include <vector>

#include "fusedmoe/config.h"
#include "fusedmoe/tensor.h"

namespace fusedmoe {

// The order of the values in packed fp4 data (w13, w2 of nvfp4 and mxfp4).
enum class Fp4Packing : uint8_t {
  checkpoint,  // as checkpoints store it; the CPU experts and the reference read only this
  sm90,        // the CUDA kernels' order; CUDA experts given checkpoint data make a packed copy of w13 and w2
};

struct ExpertWeights {
  Tensor w13, w2;
  Tensor w13_scale, w2_scale;
  Tensor w13_global_scale, w2_global_scale;
  Tensor a13_scale, a2_scale;
  Tensor w13_bias, w2_bias;
  Fp4Packing fp4_packing = Fp4Packing::checkpoint;
};

// Throws fusedmoe::Error naming the first tensor whose dtype, shape, device or layout is wrong.
void validate_weights(const MoEConfig& config, const ExpertWeights& weights);

// Weights plus the storage behind them.
struct OwnedExpertWeights {
  std::vector<Buffer> storage;
  ExpertWeights weights;
};

struct WeightQuantOptions {
  // fp8_per_tensor needs static activation scales: amax of the layer input and of the
  // intermediate activation (scale = amax / 448). Required for that scheme.
  float input_amax = 0.0f;
  float intermediate_amax = 0.0f;
};

// Allocates CPU storage for `num_local_experts` experts in the scheme's layout (scales
// included, biases only when `with_bias`). Contents are left uninitialised.
OwnedExpertWeights allocate_expert_weights(const MoEConfig& config, int64_t num_local_experts,
                                           bool with_bias = false);

// Quantizes one expert's bf16 weights (w13 [N1,K], w2 [K,I]) into slot `expert` of `dest`.
void quantize_expert_into(const MoEConfig& config, int64_t expert, const Tensor& w13_bf16,
                          const Tensor& w2_bf16, const ExpertWeights& dest);

// Converts bf16 w13 [E,N1,K] and w2 [E,K,I] into the scheme's layout (biases are not copied).
OwnedExpertWeights quantize_expert_weights(const MoEConfig& config, const Tensor& w13_bf16,
                                           const Tensor& w2_bf16, const WeightQuantOptions& options = {});

// Sets the static fp8_per_tensor activation scales of `weights` from amax values.
void set_static_activation_scales(const ExpertWeights& weights, float input_amax, float intermediate_amax);

// A copy of every defined tensor of `weights` on `device` (e.g. CPU-quantized weights to a GPU).
OwnedExpertWeights copy_expert_weights(const ExpertWeights& weights, Device device);

// Rewrites the fp4 data (w13, w2) of nvfp4 / mxfp4 `weights` from the checkpoint's order into the sm90
// packing, in place on their device, and sets weights.fp4_packing: the CUDA experts then read them where they
// lie instead of keeping a packed copy (which doubles the weights' memory). Other views of the same data still
// say `checkpoint` and must not be used with it. Needs hidden_size and intermediate_size % 32 == 0. Synchronous.
void pack_fp4_weights_sm90(const MoEConfig& config, ExpertWeights& weights);

// Bytes of expert weight storage (data + scales) of `num_experts` experts in the scheme's layout.
int64_t expert_weight_bytes(const MoEConfig& config, int64_t num_experts);

}  // namespace fusedmoe
