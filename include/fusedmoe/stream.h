// The CUDA stream fusedmoe queues its work on, per host thread. Defaults to the legacy default
// stream (nullptr). Engines set their own stream (PyTorch: the current stream) around calls;
// CUDA graph capture needs a non-default stream. Present in every build (a no-op without CUDA).
#pragma once

namespace fusedmoe {

void* current_cuda_stream();              // a cudaStream_t
void set_current_cuda_stream(void* stream);

// Sets the stream for the scope and restores the previous one.
class CudaStreamGuard {
 public:
  explicit CudaStreamGuard(void* stream) : previous_(current_cuda_stream()) { set_current_cuda_stream(stream); }
  ~CudaStreamGuard() { set_current_cuda_stream(previous_); }
  CudaStreamGuard(const CudaStreamGuard&) = delete;
  CudaStreamGuard& operator=(const CudaStreamGuard&) = delete;

 private:
  void* previous_;
};

}  // namespace fusedmoe
