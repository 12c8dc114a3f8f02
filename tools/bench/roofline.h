// This machine's roofline, measured: copy bandwidth (read + write bytes per second over
// buffers far larger than the caches) and peak f32 FMA rate, both on all threads.
#pragma once

namespace fusedmoe::bench {

struct Roofline {
  double copy_bytes_per_s;
  double fma_flops_per_s;
  int threads;
};

Roofline measure_roofline();

}  // namespace fusedmoe::bench
