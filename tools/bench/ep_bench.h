// fusedmoe-bench --ep N: the layer over N in-process expert-parallel ranks (threads, the CPU
// backend), with the dispatch (prepare) and combine (finalize) times of the all-to-all
// PrepareFinalize next to the communicator's own all_to_all_v moving the same bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedmoe/config.h"
#include "fusedmoe/weights.h"

namespace fusedmoe::bench {

struct EpBenchOptions {
  int ranks = 2;
  std::vector<int64_t> tokens_per_rank;
  uint64_t seed = 1;
};

// Prints the table; returns 0, or 1 when an output misses the reference check.
int run_ep_bench(const MoEConfig& config, const ExpertWeights& full_weights, const EpBenchOptions& options);

}  // namespace fusedmoe::bench
