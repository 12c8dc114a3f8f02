// A small fixed pool of worker threads for the CPU backend. parallel_for hands out items
// dynamically; every item must write disjoint outputs, so results never depend on scheduling.
#pragma once

#include <cstdint>
#include <functional>

namespace fusedmoe::cpu {

// Threads used (FUSEDMOE_NUM_THREADS, else the hardware concurrency).
int num_threads();

// Runs fn(i) for i in [0, count) on the pool and the calling thread; rethrows the first
// exception after all items finished.
void parallel_for(int64_t count, const std::function<void(int64_t)>& fn);

}  // namespace fusedmoe::cpu
