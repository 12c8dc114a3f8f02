// fusedmoe-bench --ep N --backend cuda: the layer over N GPUs of this host, one process per GPU,
// NCCL between them, with the dispatch (prepare) and combine (finalize) times of the CUDA EP
// PrepareFinalize next to NCCL's own all-to-all moving the same bytes, measured in the same run.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedmoe/config.h"

namespace fusedmoe::bench {

struct EpCudaBenchOptions {
  int ranks = 2;
  std::vector<int64_t> tokens_per_rank;
  EpDispatch dispatch = EpDispatch::all_to_all;
  uint64_t seed = 1;
};

// Prints rank 0's table; returns 0, or 1 when a rank failed.
int run_ep_bench_cuda(const MoEConfig& config, const EpCudaBenchOptions& options);

}  // namespace fusedmoe::bench
