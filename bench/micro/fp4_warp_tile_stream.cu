// How fast can the fp4 warp tiles' grid stream its weights when it does nothing else? The question behind the fp4
// decode points at 16-128 tokens (issue 4 asks >= 90% of the floor for the monolithic forward at 1-64 tokens):
// small_m_gemm_fp4.cu's warp tiles read 2.0-2.5 TB/s there (session 84's timeline, H100, copy 3.0 TB/s).
// This program times load-only kernels over exactly a GEMM's active weight bytes with the warp tiles' grid and
// pattern: blocks of 4 warps, each warp its own 16-row tile of the sm90 packing over all of k, U chunks of 128
// values a round; lane (gq, cq) loads the 16 bytes of segment 4ch + cq of rows gq and gq + 8 and their scale bytes
// (rows in the checkpoint's order: nvfp4 two bytes a lane and row, mxfp4 one). Variants:
//   rounds   the kernel's structure: a round's weight and scale loads, a block barrier (where the kernel stages X),
//            then their use
//   nosync   the same without the barrier
//   ahead    round r + 1's loads issued before round r's use (twice the registers)
//   noscale  rounds without the scale loads
//   delay D  a spin of D clocks after each round's use, standing in for its dequantization and mma
//   B/SM     blocks an SM (capped through dynamic shared memory; the kernel holds 6 for nvfp4, 5 for mxfp4)
// and a grid-stride read of the same bytes as the ceiling. The L2 is flushed by a 256 MB memset before each launch
// (as bench/gpu_bench.py does); each point is the median of 25 launches. Expert counts are the active experts of
// uniform routing at 16 and 128 tokens. Session 87 (H100, bench/results/session87-fp4-warp-tile-stream-h100.txt):
// rounds = nosync, 4-5% under the copy rate of weights and scales; noscale at the copy rate; ahead 4-5% faster than
// rounds on GEMM1.
//   nvcc -O3 -std=c++17 -arch=sm_90a -Isrc -Iinclude -o fp4_warp_tile_stream bench/micro/fp4_warp_tile_stream.cu
//   ./fp4_warp_tile_stream
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "cuda/kernels/mma_util.cuh"
#include "cuda_check.h"
#include "weight_stream.cuh"

using fusedmoe::cuda::load_streaming;  // the kernels' own streaming load

struct Shape {
  const char* name;
  int experts, N, K;
  bool nv;  // nvfp4 (scale per 16 values) or mxfp4 (per 32)
};

enum Mode { kRounds, kNoSync, kAhead };

template <int U, bool kNv, bool kScales>
struct Round {
  uint4 a[U], b[U];
  uint32_t sa[U], sb[U];
  // Round ch0's loads: the lanes past the end of a row (K % 128 != 0) load nothing.
  __device__ __forceinline__ void load(const uint8_t* tile, const uint8_t* s0, const uint8_t* s1, int ch0, int cq,
                                       int gq, int slices) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int ch = ch0 + u, seg = 4 * ch + cq;
      const bool ok = seg < slices;
      sa[u] = sb[u] = 0;
      if (kScales && ok) {
        if constexpr (kNv) {
          sa[u] = *reinterpret_cast<const uint16_t*>(s0 + ch * 8);
          sb[u] = *reinterpret_cast<const uint16_t*>(s1 + ch * 8);
        } else {
          sa[u] = s0[ch * 4];
          sb[u] = s1[ch * 4];
        }
      }
      a[u] = ok ? load_streaming(tile + seg * 256 + gq * 16) : make_uint4(0, 0, 0, 0);
      b[u] = ok ? load_streaming(tile + seg * 256 + 128 + gq * 16) : make_uint4(0, 0, 0, 0);
    }
  }
  // The use of a round's loads: one chain of xors seeded by a clock read, which ptxas keeps after the round's loads
  // in program order, so that every load issues before any use waits. (Plain xors were scheduled between the loads,
  // each waiting on its load before the next load issued, which the kernel's code does not do; a chain seeded by the
  // last load had that load hoisted first.) Volatile: not reassociated.
  __device__ __forceinline__ uint32_t fold() const {
    uint32_t acc;
    asm volatile("mov.u32 %0, %%clock;" : "=r"(acc));
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t v[10] = {a[u].x, a[u].y, a[u].z, a[u].w, b[u].x, b[u].y, b[u].z, b[u].w, sa[u], sb[u]};
#pragma unroll
      for (int i = 0; i < 10; ++i) asm volatile("xor.b32 %0, %0, %1;" : "+r"(acc) : "r"(v[i]));
    }
    return acc;
  }
};

__device__ __forceinline__ uint32_t spin(uint32_t acc, long long delay) {
  if (delay > 0) {
    const long long t0 = clock64();
    while (clock64() - t0 < delay) acc = acc * 3u + 1u;
  }
  return acc;
}

// blockIdx.x: 64 weight rows (4 warp tiles of 16), blockIdx.y: the expert. N % 64 == 0 (every warp has a tile).
template <int U, Mode kMode, bool kNv, bool kScales>
__global__ void __launch_bounds__(128) warp_tile_read(const uint8_t* w, const uint8_t* sc, int N, int K,
                                                      long long delay, unsigned* out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t row_bytes = K / 2, e = blockIdx.y, n0 = (int64_t(blockIdx.x) * 4 + warp) * 16;
  const int64_t scale_row = K / (kNv ? 16 : 32);
  const uint8_t* tile = w + (e * N + n0) * row_bytes;  // the warp's 16-row tile, segment-major
  const uint8_t* s0 = sc + (e * N + n0 + gq) * scale_row + cq * (kNv ? 2 : 1);
  const uint8_t* s1 = s0 + 8 * scale_row;
  const int slices = K / 32, num_chunks = (K + 127) / 128;
  uint32_t acc = 0;
  Round<U, kNv, kScales> cur;
  if constexpr (kMode == kAhead) {
    cur.load(tile, s0, s1, 0, cq, gq, slices);
    for (int ch0 = 0; ch0 < num_chunks; ch0 += U) {
      Round<U, kNv, kScales> next;
      if (ch0 + U < num_chunks) next.load(tile, s0, s1, ch0 + U, cq, gq, slices);
      __syncthreads();
      acc = spin(acc ^ cur.fold(), delay);
      cur = next;
    }
  } else {
    for (int ch0 = 0; ch0 < num_chunks; ch0 += U) {
      cur.load(tile, s0, s1, ch0, cq, gq, slices);
      if constexpr (kMode == kRounds) __syncthreads();
      acc = spin(acc ^ cur.fold(), delay);
    }
  }
  if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;  // keeps the loads; (almost) never stores
}

template <int U, Mode kMode, bool kNv, bool kScales>
void run(Timer& tm, const Shape& s, const uint8_t* w, const uint8_t* sc, unsigned* out, int blocks_per_sm,
         long long delay) {
  static const char* const kModeNames[] = {"rounds", "nosync", "ahead"};
  const auto kernel = warp_tile_read<U, kMode, kNv, kScales>;
  const int smem = cap_blocks_per_sm(kernel, blocks_per_sm);
  int resident = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, 128, smem));
  const dim3 grid(s.N / 64, s.experts);
  const float us = tm.median_us([&] { kernel<<<grid, 128, smem>>>(w, sc, s.N, s.K, delay, out); });
  CHECK(cudaGetLastError());
  const double bytes = double(s.experts) * s.N * s.K / 2;
  std::printf("%-26s %-7s%s U%d %d/SM delay %5lld  %7.2f us  %5.2f TB/s\n", s.name, kModeNames[kMode],
              kScales ? "        " : " noscale", U, resident, delay, us, bytes / us * 1e-6);
}

template <bool kNv>
void run_shape(Timer& tm, const Shape& s, const uint8_t* w, const uint8_t* sc, unsigned* out) {
  const int b = kNv ? 6 : 5;  // the kernel's blocks an SM at 8-row tiles
  for (long long d : {0LL, 800LL, 2000LL}) {
    run<4, kRounds, kNv, true>(tm, s, w, sc, out, b, d);
    run<4, kNoSync, kNv, true>(tm, s, w, sc, out, b, d);
    run<4, kAhead, kNv, true>(tm, s, w, sc, out, b, d);
  }
  run<4, kRounds, kNv, false>(tm, s, w, sc, out, b, 0);
  run<4, kRounds, kNv, true>(tm, s, w, sc, out, 8, 0);
  run<8, kRounds, kNv, true>(tm, s, w, sc, out, 4, 0);
  run<2, kAhead, kNv, true>(tm, s, w, sc, out, b, 800);
}

int main() {
  const int sms = print_card();
  // Active experts of uniform routing: E (1 - (1 - k/E)^T), rounded.
  const Shape shapes[] = {{"qwen3-nvfp4 GEMM1, 16 tok", 82, 1536, 2048, true},
                          {"qwen3-nvfp4 GEMM2, 16 tok", 82, 2048, 768, true},
                          {"gpt-oss-120b GEMM1, 16 tok", 51, 5760, 2880, false},
                          {"gpt-oss-120b GEMM2, 16 tok", 51, 2880, 2880, false},
                          {"qwen3-nvfp4 GEMM1, 128 tok", 128, 1536, 2048, true},
                          {"gpt-oss-120b GEMM1, 128 tok", 126, 5760, 2880, false}};
  Timer tm;
  unsigned* out;
  CHECK(cudaMalloc(&out, 1 << 20));
  for (const Shape& s : shapes) {
    if (s.N % 64 != 0 || s.K % 32 != 0) {
      std::fprintf(stderr, "%s: N must be a multiple of 64 and K of 32\n", s.name);
      return 1;
    }
    const size_t bytes = size_t(s.experts) * s.N * s.K / 2;
    WeightBuffers buf(bytes, bytes / 8);
    const uint8_t *w = buf.w, *sc = buf.sc;
    buf.print_copy(tm, sms, out, s.name, 26);
    if (s.nv)
      run_shape<true>(tm, s, w, sc, out);
    else
      run_shape<false>(tm, s, w, sc, out);
  }
  return 0;
}
