// Issue rate of cvt.rn.f16x2.e4m3x2 (two e4m3 values to two f16) against f16x2 FMA on one GPU: the question
// behind the fp4 decode's e4m3 route (docs/PERF_HISTORY.md, session 26). Each thread runs 8 independent
// chains of N steps; the kernel's time over the number of instructions gives instructions per clock per SM.
//   nvcc -O3 -arch=sm_90a -o cvt_rate bench/micro/cvt_e4m3_rate.cu && ./cvt_rate
#include <cuda_fp16.h>
#include <cstdio>

constexpr int kSteps = 4096, kChains = 8;

__global__ void cvt_loop(unsigned* out, unsigned seed) {
  unsigned v[kChains];
  for (int c = 0; c < kChains; ++c) v[c] = seed * (threadIdx.x + 1 + c);
  for (int i = 0; i < kSteps; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      unsigned r;
      const unsigned short lo = static_cast<unsigned short>(v[c]);
      asm volatile("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(lo));
      v[c] ^= r;  // a dependent use, one LOP3 per cvt
    }
  }
  unsigned s = 0;
  for (int c = 0; c < kChains; ++c) s ^= v[c];
  if (s == 0x12345678u) out[0] = s;
}

__global__ void fma_loop(unsigned* out, unsigned seed) {
  __half2 v[kChains];
  for (int c = 0; c < kChains; ++c) v[c] = __halves2half2(__ushort_as_half(seed + c), __ushort_as_half(seed ^ c));
  const __half2 m = __floats2half2_rn(0.999f, 1.001f), a = __floats2half2_rn(1e-3f, -1e-3f);
  for (int i = 0; i < kSteps; ++i) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) {
      v[c] = __hfma2(v[c], m, a);
      v[c] = __hfma2(v[c], m, a);  // two FMAs per step: the cvt loop's cvt + LOP3
    }
  }
  unsigned s = 0;
  for (int c = 0; c < kChains; ++c) s ^= *reinterpret_cast<unsigned*>(&v[c]);
  if (s == 0x12345678u) out[0] = s;
}

template <class F>
float time_ms(F launch) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  launch();
  cudaEventRecord(a);
  for (int r = 0; r < 5; ++r) launch();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  return ms / 5;
}

int main() {
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, 0);
  int clock_khz = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  unsigned* out = nullptr;
  cudaMalloc(&out, 4);
  const int blocks = p.multiProcessorCount * 8, threads = 256;
  const double warp_instr = double(blocks) * threads / 32 * kSteps * kChains * 2;  // 2 instructions a step
  const float cvt = time_ms([&] { cvt_loop<<<blocks, threads>>>(out, 7); });
  const float fma = time_ms([&] { fma_loop<<<blocks, threads>>>(out, 7); });
  const double clk = clock_khz * 1e3, sms = p.multiProcessorCount;
  std::printf("%s, %d SMs, %.0f MHz (nominal)\n", p.name, p.multiProcessorCount, clk / 1e6);
  std::printf("cvt.rn.f16x2.e4m3x2 + lop3: %.3f ms, %.2f warp instructions / clock / SM\n", cvt,
              warp_instr / (cvt * 1e-3) / clk / sms);
  std::printf("hfma2 x2:                   %.3f ms, %.2f warp instructions / clock / SM\n", fma,
              warp_instr / (fma * 1e-3) / clk / sms);
  return cudaGetLastError() != cudaSuccess;
}
