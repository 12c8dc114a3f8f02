// Communicator: the group of expert-parallel ranks a PrepareFinalize talks to. Only the
// group's shape is needed today; the collectives (all-gather, reduce-scatter, all-to-all-v)
// join this interface with the expert-parallel PrepareFinalize implementations.
#pragma once

#include <string>

namespace fusedmoe {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
};

}  // namespace fusedmoe
