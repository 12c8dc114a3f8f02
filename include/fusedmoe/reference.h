// A float64 reference MoE, written apart from the fast paths, that the tests and the
// benchmark use as the oracle. It follows each scheme's recipe (activation quantization,
// intermediate re-quantization, bf16 rounding of stored activations) in float64 arithmetic.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "fusedmoe/config.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/weights.h"

namespace fusedmoe {

// Output rows (float64, not rounded to bf16) for the tokens in `tokens` (all when empty), as
// [tokens.size(), K] row-major. hidden bf16 [M, K]; topk_ids i32 [M, k]; topk_weights f32 [M, k].
std::vector<double> reference_moe(const MoEConfig& config, const ExpertWeights& weights, const Tensor& hidden,
                                  const Tensor& topk_ids, const Tensor& topk_weights,
                                  std::span<const int64_t> tokens = {});

// Largest |intermediate activation| the bf16 recipe produces for these tokens: the amax to
// calibrate static fp8_per_tensor intermediate scales with.
double reference_intermediate_amax(const MoEConfig& config, const ExpertWeights& weights, const Tensor& hidden,
                                   const Tensor& topk_ids, std::span<const int64_t> tokens = {});

// The per-scheme tolerance the tests and the benchmark hold outputs to:
// |out - ref| <= atol * max|ref| + rtol * |ref| elementwise.
struct Tolerance {
  double atol;
  double rtol;
};
Tolerance tolerance_for(QuantScheme scheme);

}  // namespace fusedmoe
