// See nccl_window.h. One kernel: the peer addresses of a registered NCCL symmetric window, read
// once through NCCL's device API so the EP kernels take plain pointers.
#include "cuda/nccl_window.h"

#include "cuda/cuda_util.h"

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
#include <nccl_device.h>
#define FUSEDMOE_NCCL_DEVICE_API 1
#endif

namespace fusedmoe::cuda {
namespace {

#ifdef FUSEDMOE_NCCL_DEVICE_API
__global__ void peer_pointers_kernel(ncclWindow_t w, int n, void** out) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r < n) out[r] = ncclGetPeerPointer(w, 0, r);
}
#endif

}  // namespace

bool nccl_reaches_every_rank(ncclComm_t comm) {
#ifdef FUSEDMOE_NCCL_DEVICE_API
  int n = 0;
  if (ncclCommCount(comm, &n) != ncclSuccess) return false;
  return ncclTeamLsa(comm).nRanks == n;
#else
  (void)comm;
  return false;
#endif
}

void nccl_window_peer_pointers(ncclWindow_t w, int n, void** out, cudaStream_t s) {
#ifdef FUSEDMOE_NCCL_DEVICE_API
  peer_pointers_kernel<<<(n + 127) / 128, 128, 0, s>>>(w, n, out);
  FMOE_CUDA_CHECK(cudaGetLastError());
#else
  (void)w, (void)n, (void)out, (void)s;
  FMOE_FAIL("NCCL peer windows need NCCL 2.28 or newer");
#endif
}

}  // namespace fusedmoe::cuda
