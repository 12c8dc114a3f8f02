// Host-side helpers of the CUDA backend: error checks that throw fusedmoe::Error, the current
// stream, a device guard and the properties the kernels size themselves by.
#pragma once

#include <cuda_runtime.h>

#include "fusedmoe/error.h"
#include "fusedmoe/stream.h"
#include "fusedmoe/tensor.h"

#define FMOE_CUDA_CHECK(expr)                                                                              \
  do {                                                                                                     \
    const cudaError_t fmoe_err_ = (expr);                                                                  \
    if (fmoe_err_ != cudaSuccess)                                                                          \
      FMOE_FAIL("CUDA call ", #expr, " failed: ", cudaGetErrorName(fmoe_err_), " (", cudaGetErrorString(fmoe_err_), \
                ")");                                                                                      \
  } while (0)

// After every kernel launch.
#define FMOE_CUDA_LAUNCH_CHECK() FMOE_CUDA_CHECK(cudaGetLastError())

namespace fusedmoe::cuda {

inline cudaStream_t stream() { return static_cast<cudaStream_t>(current_cuda_stream()); }

class DeviceGuard {
 public:
  explicit DeviceGuard(Device device) {
    FMOE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device.index != previous_) FMOE_CUDA_CHECK(cudaSetDevice(device.index));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

struct DeviceInfo {
  int major = 0, minor = 0, sm_count = 0;
};
// Cached per device index.
const DeviceInfo& device_info(int device);

// Programmatic dependent launch between fusedmoe's own kernels: on unless FUSEDMOE_PDL=0.
bool pdl_enabled();
// The bf16/fp8 small-M GEMMs launch as ordinary dependents (after the previous kernel completes) unless
// FUSEDMOE_PDL_GEMM=1 (and PDL is on): launched programmatically they ran up to 1.36x slower on some decode
// points (small_m_gemm.cu says where; H200, session 27).
bool pdl_gemm_enabled();

// Throws unless `device` is a Hopper GPU (compute capability 9.0) this build has kernels for.
void require_sm90(Device device, const char* what);

}  // namespace fusedmoe::cuda
