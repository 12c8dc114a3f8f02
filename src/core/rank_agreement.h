// Every rank of an expert-parallel group must build the same layer: the exchanges are sized by
// the config, so a rank built with, say, another max_tokens_per_rank posts collectives of another
// size, which NCCL answers with a hang or mixed-up bytes (DeepEP #208). check_ranks_agree
// all-gathers the fields the ranks must share at construction and fails on every rank alike,
// naming each field that differs.
#pragma once

#include "fusedmoe/comm.h"
#include "fusedmoe/config.h"

namespace fusedmoe {

// A collective: every rank of `comm` calls it once while building its PrepareFinalize. Fields
// compared: the layer's sizes, activation, scheme, routing (scalars), formats and capacities, the
// parallel settings other than ep_rank and expert_map, and use_monolithic.
void check_ranks_agree(const MoEConfig& config, bool use_monolithic, const Communicator& comm);

}  // namespace fusedmoe
