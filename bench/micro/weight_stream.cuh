// Shared by the load-only weight-stream micro benchmarks (fp4_decode_stream.cu, fp4_warp_tile_stream.cu):
// - grid_stride_read: a grid-stride read of a buffer, the copy's shape, the ceiling they compare against;
// - Timer: the median of 25 launches, each after a 256 MB memset that flushes the L2 (as bench/gpu_bench.py does);
// - WeightBuffers: a GEMM's weight bytes and its scale bytes, filled with a constant, and their copy-shaped read time;
// - print_card: prints the card's name and SM count ("# ..."), returns the SM count;
// - cap_blocks_per_sm: raises a kernel's dynamic shared memory so that an SM holds at most blocks_per_sm of its
//   blocks, and returns those bytes, to launch it with.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda/kernels/mma_util.cuh"
#include "cuda_check.h"

__global__ void grid_stride_read(const uint4* p, int64_t n, unsigned* out) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 v = fusedmoe::cuda::load_streaming(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) out[0] = acc;  // keeps the loads; (almost) never stores
}

struct Timer {
  void* flush;
  cudaEvent_t a, b;
  Timer() {
    CHECK(cudaMalloc(&flush, 256 << 20));
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
  }
  template <typename F>
  float median_us(F launch) {
    std::vector<float> t;
    for (int r = 0; r < 26; ++r) {
      CHECK(cudaMemsetAsync(flush, r, 256 << 20));
      CHECK(cudaEventRecord(a));
      launch();
      CHECK(cudaEventRecord(b));
      CHECK(cudaEventSynchronize(b));
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      if (r) t.push_back(ms * 1000.0f);  // the first launch warms up
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

template <class Kernel>
int cap_blocks_per_sm(Kernel kernel, int blocks_per_sm) {
  const int smem = std::min((228 * 1024) / blocks_per_sm - 1024 - 512, 227 * 1024);
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  return smem;
}

struct WeightBuffers {
  uint8_t* w = nullptr;
  uint8_t* sc = nullptr;
  size_t bytes;
  WeightBuffers(size_t weight_bytes, size_t scale_bytes) : bytes(weight_bytes) {
    CHECK(cudaMalloc(&w, weight_bytes));
    CHECK(cudaMalloc(&sc, scale_bytes));
    CHECK(cudaMemset(w, 0x5a, weight_bytes));
    CHECK(cudaMemset(sc, 0x7f, scale_bytes));
  }
  ~WeightBuffers() {
    cudaFree(w);
    cudaFree(sc);
  }
  WeightBuffers(const WeightBuffers&) = delete;
  WeightBuffers& operator=(const WeightBuffers&) = delete;
  // The grid-stride read of the weight bytes (4 blocks of 512 threads an SM).
  float copy_us(Timer& tm, int sms, unsigned* out) {
    return tm.median_us([&] {
      grid_stride_read<<<sms * 4, 512>>>(reinterpret_cast<const uint4*>(w), int64_t(bytes / 16), out);
    });
  }
  // copy_us, printed as a shape's ceiling line (name left-aligned in width columns).
  float print_copy(Timer& tm, int sms, unsigned* out, const char* name, int width) {
    const float us = copy_us(tm, sms, out);
    std::printf("%-*s grid-stride read of %.1f MB: %7.2f us  %5.2f TB/s\n", width, name, bytes * 1e-6, us,
                bytes / us * 1e-6);
    return us;
  }
};

inline int print_card() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s, %d SMs\n", prop.name, sms);
  return sms;
}
