// The NCCL device-API pieces behind the NCCL communicator's PeerWindow (nccl_window.cu, built
// by nvcc). They need NCCL 2.28 or newer; with older headers nccl_reaches_every_rank is false.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

namespace fusedmoe::cuda {

// Whether every rank of comm can load from and store to the others' symmetric memory (NCCL's
// LSA team is the whole communicator: one NVLink domain).
bool nccl_reaches_every_rank(ncclComm_t comm);

// out[r] (device, n entries) = rank r's memory of window w as this rank addresses it.
void nccl_window_peer_pointers(ncclWindow_t w, int n, void** out, cudaStream_t s);

}  // namespace fusedmoe::cuda
