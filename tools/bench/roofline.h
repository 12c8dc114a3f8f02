// This machine's roofline, measured: copy bandwidth (read + write bytes per second over
// buffers larger than the last-level cache), the peak f32 FMA rate at the widest vector the
// build has, and where the CPU backend runs its GEMMs on AMX tiles, the peak bf16 TDPBF16PS
// rate; all on all threads. And the cache flush the benchmark runs before each timed forward.
#pragma once

#include <cstddef>
#include <vector>

namespace fusedmoe::bench {

struct Roofline {
  double copy_bytes_per_s;
  double fma_flops_per_s;
  double amx_flops_per_s;  // 0 where the CPU backend does not use AMX
  int threads;
};

Roofline measure_roofline();

// Bytes that evict the last-level cache when written: twice its size, at least 256 MiB.
size_t cache_flush_bytes();

// Writes a buffer of cache_flush_bytes() on all threads, so that the next forward reads its
// weights from memory (as the GPU benchmark empties the L2 before each replay).
class CacheFlush {
 public:
  CacheFlush();
  void run();

 private:
  std::vector<char> buffer_;
  unsigned char pass_ = 0;
};

}  // namespace fusedmoe::bench
