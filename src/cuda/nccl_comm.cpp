// NcclCommunicator (fusedmoe/nccl.h). all_to_all_v is a group of ncclSend/ncclRecv pairs;
// reduce_scatter_sum is ncclReduceScatter (NCCL's order of summation is fixed for a given
// communicator, so repeated runs give the same bits).
// Timeouts: communicators made here are nonblocking (ncclConfig_t::blocking = 0), so that a
// call which waits on the host for an absent peer (init, the first use of a connection,
// finalize) returns at once and is polled here with the timeout; device-side waits are polled
// on the stream (barrier). After a timeout the communicator is aborted and every later call
// fails at once.
// Peer windows: NCCL symmetric memory (ncclMemAlloc, registered as a symmetric window, a
// collective) when NCCL's load/store team is the whole communicator; their peer addresses are
// read once with the device API (nccl_window.cu).
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "cuda/cuda_util.h"
#include "cuda/nccl_window.h"
#include "fusedmoe/nccl.h"

namespace fusedmoe {
namespace {

#define FMOE_NCCL_CHECK(expr, rank)                                                                       \
  do {                                                                                                    \
    const ncclResult_t fmoe_res_ = (expr);                                                                \
    if (fmoe_res_ != ncclSuccess && fmoe_res_ != ncclInProgress)                                          \
      FMOE_FAIL("NCCL rank ", rank, ": ", #expr, " failed: ", ncclGetErrorString(fmoe_res_), " (",       \
                ncclGetLastError(nullptr), ")");                                                          \
  } while (0)

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Polls a nonblocking communicator until its last call has completed on the host side;
// returns false after timeout_s (the caller aborts it).
bool settle(ncclComm_t comm, int rank, double timeout_s, const char* what) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    ncclResult_t state = ncclSuccess;
    FMOE_NCCL_CHECK(ncclCommGetAsyncError(comm, &state), rank);
    if (state == ncclSuccess) return true;
    if (state != ncclInProgress)
      FMOE_FAIL("NCCL rank ", rank, ": ", what, " failed: ", ncclGetErrorString(state), " (", ncclGetLastError(comm),
                ")");
    if (seconds_since(start) > timeout_s) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, bool owned, int device, double timeout_s)
      : comm_(comm), owned_(owned), device_(device), timeout_(timeout_s) {
    FMOE_NCCL_CHECK(ncclCommUserRank(comm_, &rank_), -1);
    FMOE_NCCL_CHECK(ncclCommCount(comm_, &size_), rank_);
  }
  ~NcclCommunicator() override {
    if (!owned_ || aborted_) return;
    try {  // flush and disconnect within the timeout; a peer gone missing means abort instead
      FMOE_NCCL_CHECK(ncclCommFinalize(comm_), rank_);
      if (!settle(comm_, rank_, timeout_, "finalize")) {
        ncclCommAbort(comm_);
        return;
      }
    } catch (const Error&) {
      ncclCommAbort(comm_);
      return;
    }
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override {
    return "nccl rank " + std::to_string(rank_) + "/" + std::to_string(size_) + " on cuda:" + std::to_string(device_);
  }
  Device device() const override { return Device::cuda(device_); }

  void all_gather(const void* send, void* recv, size_t bytes) const override {
    check_alive();
    cuda::DeviceGuard guard(device());
    FMOE_NCCL_CHECK(ncclAllGather(send, recv, bytes, ncclUint8, comm_, cuda::stream()), rank_);
    settle_or_abort("all_gather");
  }

  void reduce_scatter_sum(const float* send, float* recv, size_t count) const override {
    check_alive();
    cuda::DeviceGuard guard(device());
    FMOE_NCCL_CHECK(ncclReduceScatter(send, recv, count, ncclFloat32, ncclSum, comm_, cuda::stream()), rank_);
    settle_or_abort("reduce_scatter_sum");
  }

  void all_to_all_v(const void* send, const size_t* send_bytes, const size_t* send_offsets, void* recv,
                    const size_t* recv_bytes, const size_t* recv_offsets) const override {
    check_alive();
    cuda::DeviceGuard guard(device());
    FMOE_NCCL_CHECK(ncclGroupStart(), rank_);
    for (int p = 0; p < size_; ++p) {
      if (send_bytes[p])
        FMOE_NCCL_CHECK(ncclSend(static_cast<const char*>(send) + send_offsets[p], send_bytes[p], ncclUint8, p, comm_,
                                 cuda::stream()),
                        rank_);
      if (recv_bytes[p])
        FMOE_NCCL_CHECK(
            ncclRecv(static_cast<char*>(recv) + recv_offsets[p], recv_bytes[p], ncclUint8, p, comm_, cuda::stream()),
            rank_);
    }
    FMOE_NCCL_CHECK(ncclGroupEnd(), rank_);
    settle_or_abort("all_to_all_v");
  }

  std::shared_ptr<PeerWindow> make_peer_window(size_t bytes) const override;

  // All ranks meet (a one-int all-reduce) and this thread waits for it, within the timeout.
  void barrier() const override {
    check_alive();
    cuda::DeviceGuard guard(device());
    int* flag = nullptr;
    FMOE_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&flag), sizeof(int), cuda::stream()));
    FMOE_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), cuda::stream()));
    FMOE_NCCL_CHECK(ncclAllReduce(flag, flag, 1, ncclInt32, ncclSum, comm_, cuda::stream()), rank_);
    // Free only once NCCL has enqueued the all-reduce (a nonblocking call may still be enqueueing
    // it); after a timeout the 4 bytes stay behind with the aborted communicator.
    settle_or_abort("barrier");
    FMOE_CUDA_CHECK(cudaFreeAsync(flag, cuda::stream()));
    wait_for_stream("barrier");
  }

  ncclComm_t handle() const { return comm_; }
  bool aborted() const { return aborted_; }
  double timeout() const { return timeout_; }

  void settle_or_abort(const char* what) const {
    if (settle(comm_, rank_, timeout_, what)) return;
    abort_after_timeout(what);
  }

 private:
  void check_alive() const {
    FMOE_CHECK(!aborted_, "NCCL rank ", rank_, ": the communicator was aborted after a timeout; create a new one");
  }

  [[noreturn]] void abort_after_timeout(const char* what) const {
    ncclCommAbort(comm_);  // frees it: nothing may use or destroy it afterwards
    aborted_ = true;
    FMOE_FAIL("NCCL rank ", rank_, " of ", size_, ": ", what, " waited ", timeout_,
              " s for the other ranks; the communicator was aborted");
  }

  void wait_for_stream(const char* what) const {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const cudaError_t q = cudaStreamQuery(cuda::stream());
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) FMOE_CUDA_CHECK(q);
      ncclResult_t async = ncclSuccess;
      FMOE_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async), rank_);
      if (async != ncclSuccess && async != ncclInProgress)
        FMOE_FAIL("NCCL rank ", rank_, ": ", what, " failed asynchronously: ", ncclGetErrorString(async));
      if (seconds_since(start) > timeout_) abort_after_timeout(what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  ncclComm_t comm_;
  bool owned_;
  int device_;
  double timeout_;
  int rank_ = 0, size_ = 1;
  mutable bool aborted_ = false;
};

// Lives no longer than its communicator. Its memory starts zeroed on every rank before any rank
// returns from the constructor (a barrier), so that no early signal from a peer is wiped.
class NcclPeerWindow final : public PeerWindow {
 public:
  NcclPeerWindow(const NcclCommunicator& comm, size_t bytes) : comm_(comm) {
    const size_t align = NCCL_WIN_REQUIRED_ALIGNMENT, size = (bytes + align - 1) / align * align;
    FMOE_NCCL_CHECK(ncclMemAlloc(&base_, size), comm.rank());
    try {
      FMOE_NCCL_CHECK(ncclCommWindowRegister(comm.handle(), base_, size, &win_, NCCL_WIN_COLL_SYMMETRIC),
                      comm.rank());
      comm.settle_or_abort("peer window registration");
      peers_ = Buffer::empty(DType::u8, {int64_t(comm.size() * sizeof(void*))}, comm.device());
      cuda::nccl_window_peer_pointers(win_, comm.size(), peers_.data_as<void*>(), cuda::stream());
      FMOE_CUDA_CHECK(cudaMemsetAsync(base_, 0, size, cuda::stream()));
      comm.barrier();
    } catch (...) {
      release();
      throw;
    }
  }
  // DeviceGuard throws where the device cannot be selected (the driver shut down, say): then nothing is released on
  // it, and no exception leaves the destructor.
  ~NcclPeerWindow() override {
    try {
      cuda::DeviceGuard guard(comm_.device());
      release();
    } catch (const Error&) {
    }
  }
  void* const* peers() const override { return peers_.data_as<void* const>(); }
  double timeout_seconds() const override { return comm_.timeout(); }

 private:
  // Deregisters (a collective) and frees; after a timeout or an abort the memory stays behind
  // rather than be freed under a registration NCCL may still hold.
  void release() noexcept {
    bool free_memory = !win_;
    if (win_ && !comm_.aborted()) {
      try {
        const ncclResult_t r = ncclCommWindowDeregister(comm_.handle(), win_);
        free_memory = (r == ncclSuccess || r == ncclInProgress) &&
                      settle(comm_.handle(), comm_.rank(), comm_.timeout(), "peer window deregistration");
      } catch (const Error&) {
      }
    }
    if (base_ && free_memory) ncclMemFree(base_);
    win_ = nullptr;
    base_ = nullptr;
  }

  const NcclCommunicator& comm_;
  void* base_ = nullptr;
  ncclWindow_t win_ = nullptr;
  Buffer peers_;
};

std::shared_ptr<PeerWindow> NcclCommunicator::make_peer_window(size_t bytes) const {
  check_alive();
  cuda::DeviceGuard guard(device());
  if (!cuda::nccl_reaches_every_rank(comm_)) return nullptr;
  return std::make_shared<NcclPeerWindow>(*this, bytes);
}

}  // namespace

NcclId nccl_unique_id() {
  ncclUniqueId id;
  FMOE_NCCL_CHECK(ncclGetUniqueId(&id), -1);
  NcclId out;
  static_assert(sizeof(out.bytes) == sizeof(id.internal), "NCCL unique id size");
  std::memcpy(out.bytes, id.internal, sizeof(out.bytes));
  return out;
}

std::unique_ptr<Communicator> make_nccl_communicator(const NcclId& id, int rank, int size, int device,
                                                     double timeout_seconds) {
  FMOE_CHECK(size >= 1 && rank >= 0 && rank < size, "make_nccl_communicator needs 0 <= rank < size, got rank ", rank,
             " of ", size);
  cuda::DeviceGuard guard(Device::cuda(device));
  ncclUniqueId nid;
  std::memcpy(nid.internal, id.bytes, sizeof(id.bytes));
  ncclComm_t comm = nullptr;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every host-side wait is polled with the timeout (see the top of this file)
  FMOE_NCCL_CHECK(ncclCommInitRankConfig(&comm, size, nid, rank, &config), rank);
  if (!settle(comm, rank, timeout_seconds, "init")) {
    ncclCommAbort(comm);
    FMOE_FAIL("NCCL rank ", rank, " of ", size, ": init waited ", timeout_seconds,
              " s for the other ranks; the communicator was aborted");
  }
  return std::make_unique<NcclCommunicator>(comm, true, device, timeout_seconds);
}

std::unique_ptr<Communicator> wrap_nccl_communicator(void* nccl_comm, int device, double timeout_seconds) {
  FMOE_CHECK(nccl_comm, "wrap_nccl_communicator needs an ncclComm_t, got null");
  return std::make_unique<NcclCommunicator>(static_cast<ncclComm_t>(nccl_comm), false, device, timeout_seconds);
}

}  // namespace fusedmoe
