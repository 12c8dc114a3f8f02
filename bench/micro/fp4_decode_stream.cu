// How fast can the fp4 split-k decode blocks' grid stream its weights when it does nothing else? The question
// behind the 1-token fp4 step (issue 4): small_m_gemm_fp4.cu's split-k GEMMs read at 1.0-1.6 TB/s. This program
// times load-only kernels over exactly a GEMM's active weight bytes, with the split-k grid (a block per 16 weight rows
// of one expert, W warps splitting k in chunks of 128 values, U chunks a warp, B blocks an SM) and variants:
//   split   lanes read as the kernel does: 4 lanes take a row's 64 bytes of a chunk, a load spans 8 rows
//   flat    the same bytes per block, but each warp load is 512 contiguous bytes (a different packing)
//   tiled   16-row tiles stored slice-major ([K/32 slices][16 rows][16 bytes]): a lane's 16 bytes of row gq, slice
//           4ch + cq lie at (4ch + cq) * 256 + gq * 16, so a load covers four whole 128-byte lines
//   +scales the kernel's scale-byte loads beside the weights (mxfp4: a byte per lane, row and chunk; with `tiled`,
//           the scales tiled too, [chunk][16 rows][4 bytes])
//   delay D a spin of D clocks after the loads, standing in for the dequantization and mma that follow them
// and a grid-stride read of the same bytes (the copy's shape) as the ceiling. The L2 is flushed by a 256 MB memset
// before each launch (as bench/gpu_bench.py does); each point is the median of 25 launches.
// Session 80 (H100, bench/results/gpu-h100-session80-2026-12-06.md): at gpt-oss-120b's 1-token GEMMs `split` takes
// 21.2 / 13.3 us, `flat` and `tiled` 16.5-16.7 / 10.8-10.9 us, the grid-stride read 17.0 / 11.0: the rows' own order
// costs the split-k grid a quarter of its load time; tiled 16-row tiles recover it (the packing in
// bench/results/patches/session80-fp4-tiled-layout.patch).
//   nvcc -O3 -std=c++17 -arch=sm_90a -Isrc -Iinclude -o fp4_decode_stream bench/micro/fp4_decode_stream.cu
//   ./fp4_decode_stream
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "cuda/kernels/mma_util.cuh"
#include "cuda_check.h"
#include "weight_stream.cuh"

using fusedmoe::cuda::load_streaming;  // the kernels' own streaming load

struct Shape {
  const char* name;
  int experts, N, K;
};

// blockIdx.x: 16 weight rows, blockIdx.y: the expert. Every chunk's loads are issued before any is used.
template <int W, int U, int kLayout, bool kScales>  // kLayout: 0 split, 1 flat, 2 tiled
__global__ void __launch_bounds__(W * 32) split_grid_read(const uint8_t* w, const uint8_t* sc, int N, int K,
                                                          long long delay, unsigned* out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, cq = lane & 3;
  const int64_t row_bytes = K / 2, n0 = int64_t(blockIdx.x) * 16, e = blockIdx.y;
  const uint8_t* base = w + (e * N + n0) * row_bytes;
  const int slices = K / 32, num_chunks = (K + 127) / 128;
  uint4 a[U], b[U];
  uint32_t s[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int ch = warp + W * u;
    a[u] = b[u] = make_uint4(0, 0, 0, 0);
    s[u] = 0;
    if constexpr (kLayout == 2) {
      if (ch < num_chunks && ch * 4 + cq < slices) {
        a[u] = load_streaming(base + (ch * 4 + cq) * 256 + gq * 16);
        b[u] = load_streaming(base + (ch * 4 + cq) * 256 + 128 + gq * 16);
        if constexpr (kScales) {  // scales tiled too: [chunk][16 rows][4 bytes]
          const uint8_t* st = sc + (e * N + n0) * (K / 32) + ch * 64 + gq * 4 + cq;
          s[u] = *st + *(st + 32);
        }
      }
    } else if constexpr (kLayout == 1) {  // pieces 2p and 2p + 1 of 512 bytes: the same bytes a warp's chunk holds
      const int64_t p0 = 2 * int64_t(ch) * 512 + lane * 16, limit = 16 * row_bytes;
      if (p0 < limit) a[u] = load_streaming(base + p0);
      if (p0 + 512 < limit) b[u] = load_streaming(base + p0 + 512);
    } else if (ch < num_chunks && ch * 4 + cq < slices) {
      a[u] = load_streaming(base + gq * row_bytes + ch * 64 + cq * 16);
      b[u] = load_streaming(base + (gq + 8) * row_bytes + ch * 64 + cq * 16);
      if constexpr (kScales) {
        const uint8_t* srow = sc + (e * N + n0 + gq) * (K / 32) + ch * 4 + cq;
        s[u] = *srow + *(srow + 8 * (K / 32));
      }
    }
  }
  uint32_t acc = 0;
#pragma unroll
  for (int u = 0; u < U; ++u) acc ^= a[u].x ^ a[u].y ^ a[u].z ^ a[u].w ^ b[u].x ^ b[u].y ^ b[u].z ^ b[u].w ^ s[u];
  if (delay > 0) {
    const long long t0 = clock64();
    while (clock64() - t0 < delay) acc = acc * 3u + 1u;
  }
  if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;  // keeps the loads; (almost) never stores
}

template <int W, int U, int kLayout, bool kScales>
void run_split(Timer& tm, const Shape& s, const uint8_t* w, const uint8_t* sc, unsigned* out, int blocks_per_sm,
               long long delay, const char* label) {
  const auto kernel = split_grid_read<W, U, kLayout, kScales>;
  const int smem = cap_blocks_per_sm(kernel, blocks_per_sm);
  int resident = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, W * 32, smem));
  const dim3 grid(s.N / 16, s.experts);
  const float us = tm.median_us([&] { kernel<<<grid, W * 32, smem>>>(w, sc, s.N, s.K, delay, out); });
  CHECK(cudaGetLastError());
  const double bytes = double(s.experts) * s.N * s.K / 2;
  std::printf("%-22s %-8s W%d U%d %d/SM delay %5lld %s  %7.2f us  %5.2f TB/s\n", s.name, label, W, U, resident, delay,
              kScales ? "+scales" : "       ", us, bytes / us * 1e-6);
}

int main() {
  const int sms = print_card();
  const Shape shapes[] = {{"gpt-oss-120b GEMM1", 4, 5760, 2880},
                          {"gpt-oss-120b GEMM2", 4, 2880, 2880},
                          {"qwen3-nvfp4 GEMM1", 8, 1536, 2048},
                          {"qwen3-nvfp4 GEMM2", 8, 2048, 768}};
  Timer tm;
  unsigned* out;
  CHECK(cudaMalloc(&out, 1 << 20));
  for (const Shape& s : shapes) {
    const size_t bytes = size_t(s.experts) * s.N * s.K / 2;
    WeightBuffers buf(bytes, bytes / 16);
    const uint8_t *w = buf.w, *sc = buf.sc;
    buf.print_copy(tm, sms, out, s.name, 22);
    for (long long d : {0LL, 1500LL}) {
      run_split<8, 3, 0, false>(tm, s, w, sc, out, 3, d, "split");
      run_split<8, 3, 1, false>(tm, s, w, sc, out, 3, d, "flat");
      run_split<8, 3, 2, false>(tm, s, w, sc, out, 3, d, "tiled");
    }
    run_split<8, 3, 0, true>(tm, s, w, sc, out, 3, 0, "split");
    run_split<8, 3, 2, true>(tm, s, w, sc, out, 3, 0, "tiled");
    run_split<4, 6, 0, false>(tm, s, w, sc, out, 4, 0, "split");
    run_split<4, 6, 2, false>(tm, s, w, sc, out, 4, 0, "tiled");
    run_split<4, 6, 2, true>(tm, s, w, sc, out, 4, 0, "tiled");
    // The blocks fitted to short rows (SmallMGemm::split_k_fit: rows of up to 16 / 8 chunks, all read by W * U).
    if (s.K <= 4 * 4 * 128) run_split<4, 4, 2, true>(tm, s, w, sc, out, 6, 0, "tiled");
    if (s.K <= 4 * 2 * 128) run_split<4, 2, 2, true>(tm, s, w, sc, out, 8, 0, "tiled");
  }
  return 0;
}
