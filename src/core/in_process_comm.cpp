// The in-process communicator group: ranks are threads sharing host memory. A collective
// publishes each rank's pointers, waits for all ranks (phase 1), copies what this rank
// receives from the peers' buffers, and waits again (phase 2) so no buffer is reused while a
// peer still reads it. Each wait has the group's timeout.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <sstream>

#include "fusedmoe/comm.h"
#include "fusedmoe/error.h"

namespace fusedmoe {
namespace {

struct Slot {
  const void* send = nullptr;
  const size_t* send_bytes = nullptr;
  const size_t* send_offsets = nullptr;
  size_t bytes = 0;
};

class Group {
 public:
  Group(int size, double timeout_s) : size_(size), timeout_(timeout_s), slots_(size), arrived_(size, 0) {}

  int size() const { return size_; }
  Slot& slot(int rank) { return slots_[rank]; }

  // Waits until every rank has arrived at this rank's `phase`-th wait.
  void wait(int rank, const char* what) {
    std::unique_lock<std::mutex> lock(mutex_);
    FMOE_CHECK(!broken_, "in-process rank ", rank, ": the group is broken by an earlier timeout (", broken_reason_,
               "); ", what, " cannot run");
    const uint64_t target = ++arrived_[rank];
    cv_.notify_all();
    const bool ok = cv_.wait_for(lock, std::chrono::duration<double>(timeout_), [&] {
      return broken_ || std::all_of(arrived_.begin(), arrived_.end(), [&](uint64_t a) { return a >= target; });
    });
    if (broken_) FMOE_FAIL("in-process rank ", rank, ": ", what, " aborted: ", broken_reason_);
    if (!ok) {
      std::ostringstream missing;
      for (int r = 0; r < size_; ++r)
        if (arrived_[r] < target) missing << (missing.tellp() > 0 ? ", " : "") << r;
      std::ostringstream why;
      why << "rank " << rank << " waited " << timeout_ << " s in " << what << " (wait #" << target
          << ") for rank(s) " << missing.str() << " of " << size_;
      broken_ = true;
      broken_reason_ = why.str();
      cv_.notify_all();
      FMOE_FAIL("in-process collective timed out: ", broken_reason_);
    }
  }

 private:
  int size_;
  double timeout_;
  std::vector<Slot> slots_;
  std::vector<uint64_t> arrived_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool broken_ = false;
  std::string broken_reason_;
};

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  std::string name() const override {
    return "in-process rank " + std::to_string(rank_) + "/" + std::to_string(group_->size());
  }
  Device device() const override { return Device::cpu(); }

  void all_gather(const void* send, void* recv, size_t bytes) const override {
    Slot& mine = group_->slot(rank_);
    mine.send = send;
    mine.bytes = bytes;
    group_->wait(rank_, "all_gather");
    for (int p = 0; p < size(); ++p) {
      const Slot& s = group_->slot(p);
      FMOE_CHECK(s.bytes == bytes, "all_gather on rank ", rank_, ": rank ", p, " sends ", s.bytes,
                 " bytes, this rank expects ", bytes);
      if (bytes) std::memcpy(static_cast<char*>(recv) + p * bytes, s.send, bytes);
    }
    group_->wait(rank_, "all_gather (done)");
  }

  void reduce_scatter_sum(const float* send, float* recv, size_t count) const override {
    Slot& mine = group_->slot(rank_);
    mine.send = send;
    mine.bytes = count * sizeof(float);
    group_->wait(rank_, "reduce_scatter_sum");
    for (int p = 0; p < size(); ++p)
      FMOE_CHECK(group_->slot(p).bytes == count * sizeof(float), "reduce_scatter_sum on rank ", rank_, ": rank ", p,
                 " passes ", group_->slot(p).bytes / sizeof(float), " floats per rank, this rank ", count);
    std::fill(recv, recv + count, 0.0f);
    for (int p = 0; p < size(); ++p) {  // rank order: the same sum on every run
      const float* block = static_cast<const float*>(group_->slot(p).send) + rank_ * count;
      for (size_t i = 0; i < count; ++i) recv[i] += block[i];
    }
    group_->wait(rank_, "reduce_scatter_sum (done)");
  }

  void all_to_all_v(const void* send, const size_t* send_bytes, const size_t* send_offsets, void* recv,
                    const size_t* recv_bytes, const size_t* recv_offsets) const override {
    Slot& mine = group_->slot(rank_);
    mine.send = send;
    mine.send_bytes = send_bytes;
    mine.send_offsets = send_offsets;
    group_->wait(rank_, "all_to_all_v");
    for (int p = 0; p < size(); ++p) {
      const Slot& s = group_->slot(p);
      FMOE_CHECK(s.send_bytes[rank_] == recv_bytes[p], "all_to_all_v on rank ", rank_, ": rank ", p, " sends ",
                 s.send_bytes[rank_], " bytes, this rank expects ", recv_bytes[p]);
      if (recv_bytes[p])
        std::memcpy(static_cast<char*>(recv) + recv_offsets[p],
                    static_cast<const char*>(s.send) + s.send_offsets[rank_], recv_bytes[p]);
    }
    group_->wait(rank_, "all_to_all_v (done)");
  }

  void barrier() const override { group_->wait(rank_, "barrier"); }

 private:
  std::shared_ptr<Group> group_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_in_process_group(int size, double timeout_seconds) {
  FMOE_CHECK(size >= 1, "an in-process group needs size >= 1, got ", size);
  FMOE_CHECK(timeout_seconds > 0.0, "the in-process group timeout must be > 0 s, got ", timeout_seconds);
  auto group = std::make_shared<Group>(size, timeout_seconds);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::make_unique<InProcessCommunicator>(group, r));
  return comms;
}

Buffer contiguous_expert_map(int64_t num_experts, int rank, int size) {
  FMOE_CHECK(size >= 1 && rank >= 0 && rank < size, "contiguous_expert_map needs 0 <= rank < size, got rank ", rank,
             " of ", size);
  FMOE_CHECK(num_experts >= size, "contiguous_expert_map needs num_experts >= ranks (every rank owns an expert), got ",
             num_experts, " experts for ", size, " ranks");
  Buffer map = Buffer::empty(DType::i32, {num_experts});
  const int64_t base = num_experts / size, extra = num_experts % size;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra), count = base + (rank < extra ? 1 : 0);
  for (int64_t e = 0; e < num_experts; ++e)
    map.data_as<int32_t>()[e] = (e >= begin && e < begin + count) ? int32_t(e - begin) : -1;
  return map;
}

}  // namespace fusedmoe
