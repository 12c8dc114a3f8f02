// Kernel launch with programmatic dependent launch (PDL, sm_90): a kernel may be scheduled
// while the previous kernel in the stream finishes, hiding launch latency between the short
// kernels of a decode-sized forward. Every kernel launched this way calls pdl_wait() before
// touching global memory, so it still sees all the previous kernel's writes and never
// overwrites what that kernel reads; pdl_launch_dependents() lets the next kernel start early.
// On unless FUSEDMOE_PDL=0 (see cuda_util.h): measured on H200 (bench/results, session 6) up to 4%
// faster at 1 token, within noise from 64 tokens. The bf16/fp8 small-M GEMMs launch without it (launch_ex's pdl
// argument; small_m_gemm.cu says why).
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda/cuda_util.h"

namespace fusedmoe::cuda {

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// Data written two launches back or more is "settled" when a grid starts: every kernel here calls
// pdl_launch_dependents() only after its own pdl_wait(), so a grid starts after the previous grid
// passed its wait, i.e. after the grid before that completed with its writes in L2 (kernels of other
// libraries, and launches without PDL, trigger at completion). Such data may be read before pdl_wait,
// from L2 (ld.global.cg, never a stale L1 line); data of the previous grid needs pdl_wait(). Two kernels work
// before their wait, each beside a kernel of ours that touches none of its data: the monolithic route+plan kernel
// after the activation quantizer (launch_route_plan's beside_previous) and the fp8 quantizers after the modular
// forward's router (launch_quantize_fp8_block's); each waits before it triggers, so the rule holds after it.
template <class T>
__device__ __forceinline__ T load_settled(const T* p) {
  return __ldcg(p);
}

// smem_bytes: dynamic shared memory (the caller raises the kernel's limit above 48 KiB). pdl: launch it as a
// programmatic dependent of the previous kernel (else it starts when that kernel has completed). cluster_x > 1:
// in clusters of that many blocks along x (grid.x a multiple of it).
template <class... KernelArgs, class... Args>
void launch_ex(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes, bool pdl, cudaStream_t stream,
               unsigned cluster_x, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  int n = 0;
  if (pdl) {
    attribute[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_x > 1) {
    attribute[n].id = cudaLaunchAttributeClusterDimension;
    attribute[n++].val.clusterDim = {cluster_x, 1, 1};
  }
  config.attrs = attribute;
  config.numAttrs = n;
  FMOE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// launch_with_smem's launch in clusters of cluster_x blocks along x.
template <class... KernelArgs, class... Args>
void launch_clustered(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, unsigned cluster_x, size_t smem_bytes,
                      cudaStream_t stream, Args&&... args) {
  launch_ex(kernel, grid, block, smem_bytes, pdl_enabled(), stream, cluster_x, std::forward<Args>(args)...);
}

template <class... KernelArgs, class... Args>
void launch_with_smem(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
                      Args&&... args) {
  launch_ex(kernel, grid, block, smem_bytes, pdl_enabled(), stream, 1u, std::forward<Args>(args)...);
}

template <class... KernelArgs, class... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  launch_with_smem(kernel, grid, block, 0, stream, std::forward<Args>(args)...);
}

}  // namespace fusedmoe::cuda
