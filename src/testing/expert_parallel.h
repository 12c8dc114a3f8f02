// Runs one MoE layer over in-process expert-parallel ranks (threads, CPU backend): what the
// EP tests, the fuzzer and fusedmoe-bench share. Rank r takes the next tokens[r] rows.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "fusedmoe/fusedmoe.h"

namespace fusedmoe::testing {

struct EpRunOptions {
  int ranks = 2;
  std::vector<int64_t> tokens;                  // per rank; sums to the rows of the inputs
  std::vector<std::vector<int32_t>> placement;  // experts of each rank (empty: contiguous blocks)
  bool monolithic = false;
  EpDispatch dispatch = EpDispatch::all_to_all;
  int64_t max_tokens_per_rank = 0;  // 0: the largest of `tokens`
  int skip_rank = -1;               // this rank builds its kernel but never calls it
  double timeout_seconds = 60.0;
  std::function<void(int rank, MoEConfig&)> adjust_config;  // a per-rank change (tests of ranks that disagree)
  int calls = 1;  // calls per rank; every call after the first must give the first's bits (else an error)
};

struct EpRunResult {
  Buffer out;                       // bf16 [M, K], NaN where a rank wrote nothing
  std::vector<std::string> errors;  // per rank, empty when it succeeded
};

// config and weights describe the whole layer (all experts, on the CPU). With routing method
// 'precomputed' the ranks call apply() with their rows of ids/weights, else forward() with
// their rows of logits.
EpRunResult run_expert_parallel(const MoEConfig& config, const ExpertWeights& weights, const Tensor& hidden,
                                const Tensor& logits, const Tensor& ids, const Tensor& topk_weights,
                                const EpRunOptions& options);

}  // namespace fusedmoe::testing
