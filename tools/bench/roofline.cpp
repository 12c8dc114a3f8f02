#include "bench/roofline.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "cpu/thread_pool.h"

namespace fusedmoe::bench {
namespace {

using f32x8 = float __attribute__((vector_size(32)));

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// 8 independent FMA chains per thread keep the FMA pipes full.
float fma_loop(int64_t iters, float seed) {
  f32x8 acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = f32x8{} + seed * float(i + 1);
  const f32x8 a = f32x8{} + 0.999999f, b = f32x8{} + 1e-7f;
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * a + b;
  float s = 0.0f;
  for (int i = 0; i < 8; ++i) s += acc[i][0] + acc[i][7];
  return s;
}

}  // namespace

Roofline measure_roofline() {
  const int threads = cpu::num_threads();
  Roofline r{0.0, 0.0, threads};
  const size_t bytes = size_t(256) << 20;
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
  const int64_t iters = 20'000'000;
  volatile float sink = 0.0f;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    std::vector<float> out(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) workers.emplace_back([&, t] { out[t] = fma_loop(iters, float(t)); });
    for (std::thread& w : workers) w.join();
    sink = sink + out[0];
    r.fma_flops_per_s = std::max(r.fma_flops_per_s, double(threads) * double(iters) * 8 * 8 * 2 / seconds_since(t0));
  }
  return r;
}

}  // namespace fusedmoe::bench
