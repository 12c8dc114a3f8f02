// Registration of the CUDA backend: device memory, copies, device checks, the router.
#include <cuda_runtime.h>

#include <cstdlib>
#include <map>
#include <mutex>

#include "core/backend_registry.h"
#include "core/route_token.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/heuristics.h"
#include "cuda/kernels/kernels.h"

namespace fusedmoe {
namespace cuda {

const DeviceInfo& device_info(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceInfo info;
  FMOE_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device));
  FMOE_CUDA_CHECK(cudaDeviceGetAttribute(&info.minor, cudaDevAttrComputeCapabilityMinor, device));
  FMOE_CUDA_CHECK(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device));
  return cache.emplace(device, info).first->second;
}

bool pdl_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("FUSEDMOE_PDL");
    return !(v && v[0] == '0');
  }();
  return enabled;
}

bool pdl_gemm_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("FUSEDMOE_PDL_GEMM");
    return pdl_enabled() && v && v[0] == '1';
  }();
  return enabled;
}

void require_sm90(Device device, const char* what) {
  FMOE_CHECK(device.kind == DeviceKind::cuda, what, " needs a CUDA device, got ", device.str());
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  FMOE_CHECK(err == cudaSuccess && device.index < count, what, " needs CUDA device ", device.index,
             ", but this machine has ", err == cudaSuccess ? count : 0, " CUDA device(s)",
             err == cudaSuccess ? "" : " (", err == cudaSuccess ? "" : cudaGetErrorString(err),
             err == cudaSuccess ? "" : ")");
  const DeviceInfo& info = device_info(device.index);
  FMOE_CHECK(info.major == 9 && info.minor == 0, what, " runs on Hopper GPUs (compute capability 9.0, sm_90a: H100, ",
             "H200, H20, GH200); ", device.str(), " has compute capability ", info.major, ".", info.minor);
}

namespace {

bool cuda_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return false;
  }
  const DeviceInfo& info = device_info(0);
  return info.major == 9 && info.minor == 0;
}

void* cuda_allocate(size_t bytes, Device device) {
  DeviceGuard guard(device);
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    FMOE_FAIL("cudaMalloc of ", bytes, " bytes on ", device.str(), " failed: ", cudaGetErrorString(err));
  }
  return p;
}

void cuda_deallocate(void* p, Device device) {
  DeviceGuard guard(device);
  cudaFree(p);
}

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  DeviceGuard guard(dst_device.kind == DeviceKind::cuda ? dst_device : src_device);
  FMOE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

void cuda_pack_fp4_sm90(void* data, size_t bytes, size_t row_bytes, Device device) {
  DeviceGuard guard(device);
  launch_pack_fp4_sm90(data, static_cast<int64_t>(bytes), static_cast<int64_t>(row_bytes), stream());
  FMOE_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace

void route(const RoutingConfig& config, const Tensor& logits, const Tensor& topk_ids, const Tensor& topk_weights) {
  FMOE_CHECK(!config.correction_bias.defined() || config.correction_bias.device() == logits.device(),
             "correction_bias must be on the logits' device ", logits.device().str(), ", got ",
             config.correction_bias.describe());
  DeviceGuard guard(logits.device());
  const RoutingParams params = make_routing_params(config, logits.size(1));
  launch_route(params, logits.data(), logits.dtype() == DType::bf16, logits.size(0), topk_ids.data_as<int32_t>(),
               topk_weights.data_as<float>(), stream(), choose_block_router(logits.size(0)));
}

}  // namespace cuda

const BackendImpl& cuda_backend() {
  static const BackendImpl impl{Backend::cuda,         "cuda",          DeviceKind::cuda,
                                cuda::cuda_allocate,   cuda::cuda_deallocate, cuda::cuda_copy,
                                cuda::make_experts,    cuda::make_prepare_finalize, cuda::cuda_available,
                                cuda::route,           cuda::cuda_pack_fp4_sm90};
  return impl;
}

}  // namespace fusedmoe
