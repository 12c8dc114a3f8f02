// Quantization schemes: how expert weights are stored and how activations are quantized
// before each expert GEMM. The exact layouts are listed in docs/ARCHITECTURE.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "fusedmoe/tensor.h"

namespace fusedmoe {

enum class QuantScheme : uint8_t {
  bf16,             // bf16 weights and activations
  fp8_per_tensor,   // fp8 weights, f32 scale per expert; static f32 activation scales a13/a2
  fp8_per_channel,  // fp8 weights, f32 scale per output row; dynamic per-token activation scales
  fp8_block,        // fp8 weights, f32 scale per 128x128 block; dynamic 1x128 activation groups
  nvfp4,            // e2m1 weights, e4m3 scale per 16 values, f32 global scale per expert; bf16 activations
  mxfp4,            // e2m1 weights, ue8m0 scale per 32 values; bf16 activations
};

inline constexpr int64_t kFp8BlockSize = 128;  // weight blocks 128x128, activation groups 1x128
inline constexpr int64_t kNvfp4GroupSize = 16;
inline constexpr int64_t kMxfp4GroupSize = 32;

const char* quant_scheme_name(QuantScheme scheme);
std::optional<QuantScheme> parse_quant_scheme(std::string_view name);

// True when activations are quantized to fp8 before the GEMMs (the W8A8 schemes).
bool scheme_quantizes_activations(QuantScheme scheme);
// True for the weight-only fp4 schemes (W4A16).
bool scheme_is_fp4(QuantScheme scheme);
// Number of activation-scale columns per row for a row of `cols` values:
// fp8_per_tensor and fp8_per_channel 1, fp8_block ceil(cols/128), others 0.
int64_t activation_scale_cols(QuantScheme scheme, int64_t cols);

// Activation quantizers, bit-exact to the scheme's recipe (used by every CPU path and the
// tests). `x` is [M, cols] bf16; `q` is [M, cols] fp8_e4m3; `scales` is [M, scale_cols] f32.
// fp8_per_tensor divides by the static scale `static_scale`; the dynamic schemes compute
// scale = max(amax, 1e-10) / 448 per row (per_channel) or per 128-value group (block).
void quantize_activations_fp8(QuantScheme scheme, const Tensor& x, float static_scale, const Tensor& q,
                              const Tensor& scales);

}  // namespace fusedmoe
