// The NCCL communicator: expert-parallel collectives between GPUs (one rank per GPU, in one
// process or many). Present when the library was built with CUDA and NCCL
// (FUSEDMOE_WITH_NCCL). Collectives are queued on the calling thread's current CUDA stream
// (fusedmoe/stream.h) and return without waiting; barrier() waits for the stream with the
// communicator's timeout, polling NCCL for asynchronous errors, and on timeout aborts the
// communicator and throws fusedmoe::Error naming the rank.
#pragma once

#include <memory>

#include "fusedmoe/comm.h"

namespace fusedmoe {

struct NcclId {
  char bytes[128];
};

// A fresh NCCL unique id: make it on one rank and hand it to every rank.
NcclId nccl_unique_id();

// Joins the group `id` as `rank` of `size` on CUDA device `device` (collective: every rank
// calls it at the same time, from its own thread or process).
std::unique_ptr<Communicator> make_nccl_communicator(const NcclId& id, int rank, int size, int device,
                                                     double timeout_seconds = 300.0);

// Wraps a communicator the caller created (an ncclComm_t); the caller keeps ownership.
std::unique_ptr<Communicator> wrap_nccl_communicator(void* nccl_comm, int device, double timeout_seconds = 300.0);

}  // namespace fusedmoe
