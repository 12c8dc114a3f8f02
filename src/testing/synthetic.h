// Seeded synthetic data shared by the tests and fusedmoe-bench: counter-based random numbers
// (the same values whatever the thread count), random tensors and expert weights in any
// scheme's layout, generated one expert at a time so large presets fit in memory.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

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

// The weights of `experts` (global ids, in local-slot order) cut from a full layer's CPU weights
// (every per-expert tensor, scales and biases included; shared static scales copied).
OwnedExpertWeights slice_experts(const ExpertWeights& full, int64_t num_experts, const std::vector<int32_t>& experts);

// What a kernel call reads, on one device: the config (its correction bias moved along), the
// weights and the inputs. On the CPU these are views of the given tensors, elsewhere copies.
struct LayerInputs {
  MoEConfig config;
  OwnedExpertWeights weights;
  Buffer hidden, logits, ids, topk_weights, bias;
};
LayerInputs layer_inputs_on(Device device, const MoEConfig& config, const ExpertWeights& weights,
                            const Buffer& hidden, const Buffer& logits, const Buffer& ids, const Buffer& topk_weights);

// This rank's expert_map for a placement: `experts` in local slots 0.., -1 elsewhere.
Buffer expert_map_of(int64_t num_experts, const std::vector<int32_t>& experts);
// The global ids of a map's local experts, in local-slot order.
std::vector<int32_t> experts_of_map(const Tensor& expert_map);

}  // namespace fusedmoe::testing
