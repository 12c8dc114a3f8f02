#include "bench/roofline.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/amx_gemm.h"
#include "cpu/thread_pool.h"

namespace fusedmoe::bench {
namespace {

#ifdef __AVX512F__
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
using f32xN = float __attribute__((vector_size(kLanes * sizeof(float))));

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 12 independent FMA chains per thread keep both FMA pipes full.
constexpr int kChains = 12;
float fma_loop(int64_t iters, float seed) {
  f32xN acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = f32xN{} + seed * float(i + 1);
  const f32xN a = f32xN{} + 0.999999f, b = f32xN{} + 1e-7f;
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * a + b;
  float s = 0.0f;
  for (int i = 0; i < kChains; ++i) s += acc[i][0] + acc[i][kLanes - 1];
  return s;
}

// Best of `reps` runs of fn(thread) on every thread at once; returns the seconds.
template <class Fn>
double best_seconds(int threads, int reps, Fn fn) {
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) workers.emplace_back([&, t] { fn(t); });
    for (std::thread& w : workers) w.join();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

}  // namespace

size_t cache_flush_bytes() {
  const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return std::max(size_t(256) << 20, llc > 0 ? 2 * size_t(llc) : size_t(0));
}

CacheFlush::CacheFlush() : buffer_(cache_flush_bytes()) {}

void CacheFlush::run() {
  ++pass_;
  const int64_t chunks = 64;
  const size_t n = buffer_.size() / chunks;
  cpu::parallel_for(chunks, [&](int64_t c) { std::memset(buffer_.data() + c * n, pass_, n); });
}

Roofline measure_roofline() {
  const int threads = cpu::num_threads();
  Roofline r{0.0, 0.0, 0.0, threads};
  const size_t bytes = cache_flush_bytes() / 2;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const int64_t chunks = 64;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    cpu::parallel_for(chunks, [&](int64_t c) {
      const size_t n = bytes / chunks;
      std::memcpy(dst.data() + c * n, src.data() + c * n, n);
    });
    if (rep > 0) r.copy_bytes_per_s = std::max(r.copy_bytes_per_s, 2.0 * double(bytes) / seconds_since(t0));
  }
  std::vector<float> sink(static_cast<size_t>(threads));
  const int64_t fma_iters = 10'000'000;
  const double fma_s = best_seconds(threads, 3, [&](int t) { sink[t] = fma_loop(fma_iters, float(t)); });
  r.fma_flops_per_s = double(threads) * double(fma_iters) * kChains * kLanes * 2 / fma_s;
  if (cpu::amx::enabled()) {
    const int64_t amx_iters = 1'000'000;
    std::vector<double> flops(static_cast<size_t>(threads));
    const double amx_s = best_seconds(threads, 3, [&](int t) { flops[t] = cpu::amx::peak_loop(amx_iters); });
    r.amx_flops_per_s = double(threads) * flops[0] / amx_s;
  }
  return r;
}

}  // namespace fusedmoe::bench
