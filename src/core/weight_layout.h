// The dtype and shape of every ExpertWeights tensor for a config: one table that validation,
// allocation and the byte counts all read.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "fusedmoe/config.h"
#include "fusedmoe/weights.h"

namespace fusedmoe {

struct WeightTensorSpec {
  const char* name;
  Tensor ExpertWeights::*member;
  DType dtype;
  std::vector<int64_t> shape;
  enum class Use : uint8_t { required, optional, unused } use;
};

// The ten ExpertWeights fields, in declaration order, for `num_local_experts` experts.
std::array<WeightTensorSpec, 10> weight_layout(const MoEConfig& config, int64_t num_local_experts);

// Throws unless weights.fp4_packing is the checkpoint's order; `who` (e.g. "the CPU experts") reads only that.
void check_checkpoint_fp4_packing(const ExpertWeights& weights, const char* who);

}  // namespace fusedmoe
