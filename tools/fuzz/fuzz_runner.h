// Runs one fuzz case against the float64 oracle (see fuzz_case.h): valid cases must match the
// reference within the scheme's tolerance, be finite where it is, not be all zero where it is
// not, and give the same bits twice; faulty cases must throw fusedmoe::Error and leave the
// NaN-poisoned output untouched.
#pragma once

#include <string>

#include "fuzz/fuzz_case.h"

namespace fusedmoe::fuzz {

struct Outcome {
  bool ok = true;
  std::string message;  // why it failed
};

Outcome run_case(const FuzzCase& c);

}  // namespace fusedmoe::fuzz
