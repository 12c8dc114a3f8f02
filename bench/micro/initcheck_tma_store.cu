// Does compute-sanitizer's initcheck see global memory written by the TMA unit? The question behind the initcheck
// reports on CudaExperts/GptOssLayerShapeMxfp4.MatchesTheReference/grouped (docs/TESTING.md): the activation kernel's
// plain loads of h, which CUTLASS's grouped GEMM1 wrote through its TMA-store epilogue into a workspace nothing else
// had written, while the test's output matched the oracle.
// Three fresh cudaMalloc buffers of 64 rows x 64 bf16 (8 KiB) are written in full by one 1-block kernel each: with
// plain st.global (control), with a 1-D bulk copy from shared memory (cp.async.bulk.global.shared::cta), and with
// a 2-D tensor store (cp.async.bulk.tensor.2d.global.shared::cta, a 64 x 64 box). A reader kernel then sums each
// buffer with plain loads. Every value is 1, so each sum must print 4096; under
//   compute-sanitizer --tool initcheck ./initcheck_tma_store
// any report whose address lies in a buffer means initcheck did not track that buffer's writer.
//   nvcc -O3 -arch=sm_90a -o initcheck_tma_store bench/micro/initcheck_tma_store.cu -lcuda
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "cuda_check.h"

constexpr int kRows = 64, kCols = 64, kBytes = kRows * kCols * 2;

__device__ void fill_shared(__nv_bfloat16* s) {
  for (int i = threadIdx.x; i < kRows * kCols; i += blockDim.x) s[i] = __float2bfloat16(1.0f);
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the generic writes, seen by the async proxy
  __syncthreads();
}

__global__ void write_plain(__nv_bfloat16* dst) {
  for (int i = threadIdx.x; i < kRows * kCols; i += blockDim.x) dst[i] = __float2bfloat16(1.0f);
}

__global__ void write_bulk(__nv_bfloat16* dst) {
  __shared__ alignas(128) __nv_bfloat16 s[kRows * kCols];
  fill_shared(s);
  if (threadIdx.x == 0) {
    const uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(s));
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(src), "r"(kBytes)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }
}

__global__ void write_tensor(const __grid_constant__ CUtensorMap map) {
  __shared__ alignas(128) __nv_bfloat16 s[kRows * kCols];
  fill_shared(s);
  if (threadIdx.x == 0) {
    const uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(s));
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(&map), "r"(src),
                 "r"(0), "r"(0)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  }
}

__global__ void sum(const __nv_bfloat16* src, float* out) {
  float acc = 0.0f;
  for (int i = threadIdx.x; i < kRows * kCols; i += blockDim.x) acc += __bfloat162float(src[i]);
  atomicAdd(out, acc);
}

int main() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || !fn) {
    std::printf("no cuTensorMapEncodeTiled\n");
    return 1;
  }
  const auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  const char* names[3] = {"plain st.global", "1-D bulk copy", "2-D tensor store"};
  __nv_bfloat16* buf[3];
  for (auto& b : buf) CHECK(cudaMalloc(&b, kBytes));
  float* sums;
  CHECK(cudaMalloc(&sums, 3 * sizeof(float)));
  CHECK(cudaMemset(sums, 0, 3 * sizeof(float)));
  CUtensorMap map;
  const cuuint64_t dims[2] = {kCols, kRows}, strides[1] = {kCols * 2};
  const cuuint32_t box[2] = {kCols, kRows}, elem[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, buf[2], dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_NONE,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    std::printf("cuTensorMapEncodeTiled failed: %d\n", int(r));
    return 1;
  }
  write_plain<<<1, 256>>>(buf[0]);
  write_bulk<<<1, 256>>>(buf[1]);
  write_tensor<<<1, 256>>>(map);
  CHECK(cudaGetLastError());
  for (int i = 0; i < 3; ++i) sum<<<1, 256>>>(buf[i], sums + i);
  float h[3];
  CHECK(cudaMemcpy(h, sums, sizeof(h), cudaMemcpyDeviceToHost));
  for (int i = 0; i < 3; ++i)
    std::printf("%-17s buffer %p .. %p  sum %.0f (expected %d)\n", names[i], static_cast<void*>(buf[i]),
                static_cast<void*>(reinterpret_cast<char*>(buf[i]) + kBytes), h[i], kRows * kCols);
  return 0;
}
