// Per-thread current CUDA stream (see fusedmoe/stream.h).
#include "fusedmoe/stream.h"

namespace fusedmoe {
namespace {
thread_local void* g_stream = nullptr;
}

void* current_cuda_stream() { return g_stream; }
void set_current_cuda_stream(void* stream) { g_stream = stream; }

}  // namespace fusedmoe
