// fusedmoe::Error — the one exception type of the library — and the check macros
// that build its message ("<what> must be <expected>, got <actual>") with file:line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace fusedmoe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
[[noreturn]] void throw_error(const char* file, int line, const Args&... args) {
  std::ostringstream os;
  os << "fusedmoe: ";
  (os << ... << args);
  os << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace fusedmoe

// FMOE_CHECK(cond, parts...): throws fusedmoe::Error with the parts streamed together.
#define FMOE_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) ::fusedmoe::detail::throw_error(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

#define FMOE_FAIL(...) ::fusedmoe::detail::throw_error(__FILE__, __LINE__, __VA_ARGS__)
