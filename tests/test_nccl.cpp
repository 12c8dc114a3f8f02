// The NCCL communicator on two or more GPUs of this host (one thread per GPU): all_gather,
// reduce_scatter_sum, all_to_all_v with uneven byte counts, barrier, and a missing rank that
// ends in a timeout error instead of a hang. Skips with fewer than two GPUs.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "fusedmoe/fusedmoe.h"
#include "fusedmoe/nccl.h"

namespace fusedmoe::test {
namespace {

int gpu_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

template <class F>
std::vector<std::string> on_every_rank(int n, F body) {
  const NcclId id = nccl_unique_id();
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        cudaSetDevice(r);
        cudaStream_t s;
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
        {
          const CudaStreamGuard guard(s);
          auto comm = make_nccl_communicator(id, r, n, r, 5.0);
          body(*comm, r, s);
        }
        cudaStreamDestroy(s);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

TEST(Nccl, CollectivesGiveTheExpectedBytes) {
  const int n = gpu_count();
  if (n < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n;
  const auto errors = on_every_rank(n, [n](const Communicator& comm, int r, cudaStream_t s) {
    const Device dev = Device::cuda(r);
    // all_gather: rank r sends 5 floats of value r.
    std::vector<float> mine(5, float(r)), all(5 * n);
    Buffer send = copy_to(Tensor(mine.data(), DType::f32, {5}), dev);
    Buffer recv = Buffer::empty(DType::f32, {5 * n}, dev);
    comm.all_gather(send.data_as<float>(), recv.data_as<float>(), 5 * sizeof(float));
    cudaStreamSynchronize(s);
    copy_tensor(Tensor(all.data(), DType::f32, {5 * n}), recv);
    for (int p = 0; p < n; ++p)
      for (int i = 0; i < 5; ++i) ASSERT_EQ(all[p * 5 + i], float(p));
    // reduce_scatter_sum: block b of rank r holds r + 10 b; rank r receives sum_p (p + 10 r).
    std::vector<float> blocks(3 * n), out(3);
    for (int b = 0; b < n; ++b)
      for (int i = 0; i < 3; ++i) blocks[b * 3 + i] = float(r + 10 * b);
    Buffer bsend = copy_to(Tensor(blocks.data(), DType::f32, {3 * n}), dev);
    Buffer brecv = Buffer::empty(DType::f32, {3}, dev);
    comm.reduce_scatter_sum(bsend.data_as<float>(), brecv.data_as<float>(), 3);
    cudaStreamSynchronize(s);
    copy_tensor(Tensor(out.data(), DType::f32, {3}), brecv);
    const float expect = float(n * (n - 1) / 2 + 10 * r * n);
    for (float v : out) ASSERT_EQ(v, expect);
    // all_to_all_v: rank r sends (p + 1) bytes of value 16 r + p to rank p.
    std::vector<size_t> sb(n), so(n), rb(n), ro(n);
    size_t stotal = 0, rtotal = 0;
    for (int p = 0; p < n; ++p) {
      sb[p] = size_t(p + 1), so[p] = stotal, stotal += sb[p];
      rb[p] = size_t(r + 1), ro[p] = rtotal, rtotal += rb[p];
    }
    std::vector<uint8_t> sbytes(stotal), rbytes(rtotal);
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < sb[p]; ++i) sbytes[so[p] + i] = uint8_t(16 * r + p);
    Buffer asend = copy_to(Tensor(sbytes.data(), DType::u8, {int64_t(stotal)}), dev);
    Buffer arecv = Buffer::empty(DType::u8, {int64_t(rtotal)}, dev);
    comm.all_to_all_v(asend.data_as<uint8_t>(), sb.data(), so.data(), arecv.data_as<uint8_t>(), rb.data(), ro.data());
    comm.barrier();
    copy_tensor(Tensor(rbytes.data(), DType::u8, {int64_t(rtotal)}), arecv);
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < rb[p]; ++i) ASSERT_EQ(rbytes[ro[p] + i], uint8_t(16 * p + r));
  });
  for (int r = 0; r < n; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

// Rank 1 joins the barrier only after rank 0 gave up on it: rank 0 times out, then rank 1
// (whose peer has aborted) times out too; both report it and neither hangs, in the collective
// or in tearing the communicator down (an aborted communicator is not destroyed again).
TEST(Nccl, ALateRankIsATimeoutErrorNotAHang) {
  const int n = gpu_count();
  if (n < 2) GTEST_SKIP() << "needs 2 GPUs, found " << n;
  std::atomic<bool> rank0_done{false};
  const auto errors = on_every_rank(2, [&](const Communicator& comm, int r, cudaStream_t) {
    if (r == 1)
      while (!rank0_done) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    try {
      comm.barrier();
    } catch (...) {
      if (r == 0) rank0_done = true;
      throw;
    }
    if (r == 0) rank0_done = true;
  });
  EXPECT_NE(errors[0].find("waited 5 s"), std::string::npos) << errors[0];
  EXPECT_NE(errors[1], "") << "rank 1 joined a barrier its peer had abandoned and got no error";
}

}  // namespace
}  // namespace fusedmoe::test
