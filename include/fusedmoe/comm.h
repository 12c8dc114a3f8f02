// Communicator: the group of expert-parallel ranks a PrepareFinalize talks to, and the
// collectives it needs. Buffers live on device(); counts and offsets are host arrays of
// size() entries, in bytes. Every rank of the group must make the same calls in the same
// order; a wait that lasts past the group's timeout throws fusedmoe::Error naming the rank,
// the peers it waited for and the collective.
//
// Implementations: the in-process group (threads of one process as ranks, host memory; what
// the CPU tests and `fusedmoe-bench --ep N` use). NCCL is the GPU one (see README status); it
// also makes PeerWindows from NCCL symmetric memory when every rank is on one NVLink domain.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "fusedmoe/tensor.h"

namespace fusedmoe {

// Device memory on every rank of a group that every rank reads and writes with plain loads and
// stores (NVLink within one host): `bytes` per rank, made by all ranks together and freed when
// the last reference goes (before its Communicator).
class PeerWindow {
 public:
  virtual ~PeerWindow() = default;
  // A device array of the group's size: entry r is rank r's memory as this rank addresses it.
  virtual void* const* peers() const = 0;
  // How long a kernel may wait for a peer's signal in this memory before it gives up.
  virtual double timeout_seconds() const = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  // recv holds size() blocks of `bytes`; block r is rank r's `send`.
  virtual void all_gather(const void* send, void* recv, size_t bytes) const = 0;
  // send holds size() blocks of `count` floats; recv (count floats) is the sum over ranks, in
  // rank order, of every rank's block for this rank — the same bits on every run.
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t count) const = 0;
  // Block p of send (send_bytes[p] at send_offsets[p]) goes to rank p; block p of recv comes
  // from rank p (recv_bytes[p] must equal what p sends to this rank).
  virtual void all_to_all_v(const void* send, const size_t* send_bytes, const size_t* send_offsets, void* recv,
                            const size_t* recv_bytes, const size_t* recv_offsets) const = 0;
  virtual void barrier() const = 0;
  // A PeerWindow of `bytes` per rank, made by all ranks together; null (on every rank) where some
  // rank cannot reach another's memory with loads and stores, or the implementation has none.
  virtual std::shared_ptr<PeerWindow> make_peer_window(size_t) const { return nullptr; }
};

// `size` communicators of one in-process group (rank i at index i), to be used by `size`
// threads. Waits time out after `timeout_seconds`; after a timeout the group is broken and
// every later call fails at once.
std::vector<std::unique_ptr<Communicator>> make_in_process_group(int size, double timeout_seconds = 60.0);

// The default expert placement: contiguous blocks, the first E % size ranks one expert more.
// Returns this rank's expert_map (i32 [E] on the CPU: global -> local slot, -1 elsewhere).
Buffer contiguous_expert_map(int64_t num_experts, int rank, int size);

}  // namespace fusedmoe
