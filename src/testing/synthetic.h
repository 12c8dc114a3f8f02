// Seeded synthetic data shared by the tests and fusedmoe-bench: counter-based random numbers
// (the same values whatever the thread count), random tensors and expert weights in any
// scheme's layout, generated one expert at a time so large presets fit in memory.
#pragma once

#include <cstdint>
#include <functional>

#include "fusedmoe/config.h"
#include "fusedmoe/tensor.h"
#include "fusedmoe/weights.h"

namespace fusedmoe::testing {

// Uniform in [-1, 1) and standard normal, from (seed, index).
float uniform(uint64_t seed, uint64_t index);
float normal(uint64_t seed, uint64_t index);

Buffer random_bf16(std::initializer_list<int64_t> shape, uint64_t seed, float stddev = 1.0f);
Buffer random_f32(std::initializer_list<int64_t> shape, uint64_t seed, float stddev = 1.0f);

struct SyntheticWeightOptions {
  bool with_bias = false;
  // fp8_per_tensor: calibration batch for the static activation scales (bf16 [M, K] and its
  // top-k ids); required for that scheme.
  Tensor calibration_hidden, calibration_ids;
  // Called after each expert with (done, total), e.g. to show progress.
  std::function<void(int64_t, int64_t)> progress;
};

// Random bf16 weights (std 1/sqrt(fan-in)) converted to the config's scheme.
OwnedExpertWeights synthetic_expert_weights(const MoEConfig& config, uint64_t seed,
                                            const SyntheticWeightOptions& options = {});

}  // namespace fusedmoe::testing
