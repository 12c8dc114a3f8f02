// fusedmoe-stream-probe: how fast can one kernel read a decode step's expert weights, and which
// access pattern gets there? The small-M GEMMs and the fused decode kernel stream weights at
// 40-65% of the DRAM peak at 1 token (ncu, H200); this probe separates the access pattern from the
// math. It reads one buffer (default 256 MiB, beyond L2) viewed as rows of `row_bytes` (4096 = a
// bf16 row of K = 2048; 7168 = an fp8 row of K = 7168) with:
//   linear<U>      every thread U 16-byte loads in flight, grid-stride over the whole buffer
//   smallm<U>      the small-M kernels' pattern: a block per 16 rows, 4 warps splitting each row in
//                  64-byte chunks (ch = warp, warp + 4, ...), lane (g, c) reading rows g and g + 8 at
//                  chunk offset 16 c, U chunks per row in flight
//   rowrun<U>      a block per 16 rows, each warp 4 whole rows, 512 contiguous bytes per load
//                  instruction, U in flight
//   bulk<S>        a block per 16 rows, one thread issuing cp.async.bulk copies (1 KiB of each of
//                  the 16 rows per stage) into S shared-memory stages tracked by mbarriers; the
//                  block reads each stage from shared memory
// and prints GB/s of each next to a device-to-device cudaMemcpy of the same bytes (counted read +
// write, as bench/gpu_bench.py counts its copy ceiling). Every kernel folds what it reads into a
// value it stores only if it equals a magic number, so nothing is optimised away.
// Keep the buffer well above L2 (50 MiB on H100/H200): at 48 MiB the reads partly hit L2 and the
// figures exceed DRAM (bulk<2> read "6.1 TB/s" on an H200).
// First run (H200, 256 MiB, bench/results/gpu-h200-session6-2026-11-28.md): linear 4.40 TB/s, whole-row
// runs 4.26-4.28, bulk stages 4.36-4.41, the small-M pattern 4.07 (4 KiB rows) and 3.57-3.64 (7 KiB rows)
// — the pattern alone reaches 86-98% of a linear read, so the kernels' 55-65% is their latency structure.
// Usage: fusedmoe-stream-probe [MiB=256] [row_bytes=4096] [reps=20]
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

namespace {

#define PROBE_CHECK(x)                                                                       \
  do {                                                                                       \
    const cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                                 \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

constexpr uint32_t kMagic = 0x9e3779b9u;

__device__ inline uint32_t fold(uint4 v) { return v.x ^ (v.y * 3u) ^ (v.z * 5u) ^ (v.w * 7u); }

__device__ inline void sink(uint32_t acc, uint32_t* out) {
  if (acc == kMagic) out[0] = acc;
}

template <int U>
__global__ void linear(const uint4* p, int64_t n16, uint32_t* out) {
  uint32_t acc = 0;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i0 < n16; i0 += U * stride) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = i0 + u * stride < n16 ? __ldg(p + i0 + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= fold(v[u]);
  }
  sink(acc, out);
}

template <int U>
__global__ void __launch_bounds__(128) smallm(const uint8_t* w, int64_t row_bytes, uint32_t* out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const uint8_t* r0 = w + (int64_t(blockIdx.x) * 16 + g) * row_bytes + c * 16;
  const uint8_t* r1 = r0 + 8 * row_bytes;
  const int64_t chunks = row_bytes / 64;
  uint32_t acc = 0;
  for (int64_t ch0 = warp; ch0 < chunks; ch0 += 4 * U) {
    uint4 a[U], b[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t ch = ch0 + 4 * u;
      a[u] = ch < chunks ? __ldg(reinterpret_cast<const uint4*>(r0 + ch * 64)) : make_uint4(0, 0, 0, 0);
      b[u] = ch < chunks ? __ldg(reinterpret_cast<const uint4*>(r1 + ch * 64)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) acc ^= fold(a[u]) ^ fold(b[u]);
  }
  sink(acc, out);
}

template <int U>
__global__ void __launch_bounds__(128) rowrun(const uint8_t* w, int64_t row_bytes, uint32_t* out) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint32_t acc = 0;
  for (int r = 0; r < 4; ++r) {
    const uint8_t* row = w + (int64_t(blockIdx.x) * 16 + warp * 4 + r) * row_bytes;
    for (int64_t o0 = int64_t(lane) * 16; o0 < row_bytes; o0 += U * 512) {
      uint4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        v[u] = o0 + u * 512 < row_bytes ? __ldg(reinterpret_cast<const uint4*>(row + o0 + u * 512))
                                        : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int u = 0; u < U; ++u) acc ^= fold(v[u]);
    }
  }
  sink(acc, out);
}

// ---- bulk copies into shared memory (sm_90) ----
__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}

__device__ inline void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}

__device__ inline void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

__device__ inline void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}

constexpr int kBulkRows = 16, kBulkChunk = 1024;  // per stage: 1 KiB of each of 16 rows

template <int S>
__global__ void __launch_bounds__(128) bulk(const uint8_t* w, int64_t row_bytes, uint32_t* out) {
  extern __shared__ __align__(128) uint8_t stage_mem[];  // S * 16 KiB
  __shared__ __align__(8) uint64_t full[S];
  const uint8_t* rows = w + int64_t(blockIdx.x) * kBulkRows * row_bytes;
  const int64_t steps = row_bytes / kBulkChunk;
  auto issue = [&](int64_t step) {
    const int s = static_cast<int>(step % S);
    mbar_expect_tx(&full[s], kBulkRows * kBulkChunk);
    for (int r = 0; r < kBulkRows; ++r)
      bulk_copy(stage_mem + (s * kBulkRows + r) * kBulkChunk, rows + r * row_bytes + step * kBulkChunk, kBulkChunk,
                &full[s]);
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) mbar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int64_t step = 0; step < S && step < steps; ++step) issue(step);
  uint32_t acc = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const int s = static_cast<int>(step % S);
    mbar_wait(&full[s], static_cast<uint32_t>((step / S) & 1));
    const uint4* st = reinterpret_cast<const uint4*>(stage_mem + s * kBulkRows * kBulkChunk);
#pragma unroll
    for (int i = 0; i < kBulkRows * kBulkChunk / 16 / 128; ++i) acc ^= fold(st[i * 128 + threadIdx.x]);
    __syncthreads();  // every thread is done with stage s before it is refilled
    if (threadIdx.x == 0 && step + S < steps) issue(step + S);
  }
  sink(acc, out);
}

// ---- timing ----
float time_ms(const std::function<void()>& launch, int reps) {
  cudaEvent_t a, b;
  PROBE_CHECK(cudaEventCreate(&a));
  PROBE_CHECK(cudaEventCreate(&b));
  launch();  // warm-up
  PROBE_CHECK(cudaGetLastError());
  PROBE_CHECK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) launch();
  PROBE_CHECK(cudaEventRecord(b));
  PROBE_CHECK(cudaEventSynchronize(b));
  PROBE_CHECK(cudaGetLastError());
  float ms = 0;
  PROBE_CHECK(cudaEventElapsedTime(&ms, a, b));
  PROBE_CHECK(cudaEventDestroy(a));
  PROBE_CHECK(cudaEventDestroy(b));
  return ms / reps;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t mib = argc > 1 ? std::atoll(argv[1]) : 256;
  const int64_t row_bytes = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 20;
  if (row_bytes % kBulkChunk != 0 || row_bytes <= 0) {
    std::fprintf(stderr, "row_bytes must be a positive multiple of %d, got %lld\n", kBulkChunk, (long long)row_bytes);
    return 2;
  }
  const int64_t rows = (mib << 20) / row_bytes / 16 * 16, bytes = rows * row_bytes;
  cudaDeviceProp prop{};
  PROBE_CHECK(cudaGetDeviceProperties(&prop, 0));
  uint8_t *w = nullptr, *copy = nullptr;
  uint32_t* out = nullptr;
  PROBE_CHECK(cudaMalloc(&w, bytes));
  PROBE_CHECK(cudaMalloc(&copy, bytes));
  PROBE_CHECK(cudaMalloc(&out, 64));
  PROBE_CHECK(cudaMemset(w, 0x5a, bytes));
  const unsigned blocks16 = static_cast<unsigned>(rows / 16);
  std::printf("# %s, %d SMs: %lld MiB as %lld rows of %lld bytes, median of %d launches\n", prop.name,
              prop.multiProcessorCount, (long long)(bytes >> 20), (long long)rows, (long long)row_bytes, reps);
  const float copy_ms = time_ms([&] { PROBE_CHECK(cudaMemcpyAsync(copy, w, bytes, cudaMemcpyDeviceToDevice)); }, reps);
  const double copy_gbs = 2.0 * bytes / (copy_ms * 1e6);
  std::printf("%-14s %9.1f us %8.0f GB/s (read + write)\n", "memcpy d2d", copy_ms * 1e3, copy_gbs);
  auto report = [&](const char* name, const std::function<void()>& launch) {
    const float ms = time_ms(launch, reps);
    const double gbs = bytes / (ms * 1e6);
    std::printf("%-14s %9.1f us %8.0f GB/s  %5.1f%% of the copy rate\n", name, ms * 1e3, gbs, 100.0 * gbs / copy_gbs);
  };
  const unsigned lin_grid = static_cast<unsigned>(prop.multiProcessorCount * 8);
  report("linear<4>", [&] { linear<4><<<lin_grid, 256>>>(reinterpret_cast<const uint4*>(w), bytes / 16, out); });
  report("linear<8>", [&] { linear<8><<<lin_grid, 256>>>(reinterpret_cast<const uint4*>(w), bytes / 16, out); });
  report("smallm<4>", [&] { smallm<4><<<blocks16, 128>>>(w, row_bytes, out); });
  report("smallm<8>", [&] { smallm<8><<<blocks16, 128>>>(w, row_bytes, out); });
  report("rowrun<2>", [&] { rowrun<2><<<blocks16, 128>>>(w, row_bytes, out); });
  report("rowrun<4>", [&] { rowrun<4><<<blocks16, 128>>>(w, row_bytes, out); });
  for (int stages : {2, 4}) {
    const int smem = stages * kBulkRows * kBulkChunk;
    auto k = stages == 2 ? bulk<2> : bulk<4>;
    PROBE_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    const std::string name = "bulk<" + std::to_string(stages) + ">";
    report(name.c_str(), [&] { k<<<blocks16, 128, smem>>>(w, row_bytes, out); });
  }
  PROBE_CHECK(cudaFree(w));
  PROBE_CHECK(cudaFree(copy));
  PROBE_CHECK(cudaFree(out));
  return 0;
}
