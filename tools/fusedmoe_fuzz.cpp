// fusedmoe-fuzz: randomized differential testing of every backend against the float64 oracle.
//   fusedmoe-fuzz [--seeds A:B | --seed S] [--backend cpu|cuda|all] [--small] [--jobs N] [--max-seconds T]
//                 [--verbose]
// --small draws ~20x cheaper cases (fuzz_case.h kSmallBudget) for long campaigns; a seed's case
// depends on it, so a repro repeats the flag. --jobs runs cases on N host threads (the library
// is thread-safe; CPU parallel regions take turns), for the many-core GPU machine.
// Each seed draws one configuration (fuzz/fuzz_case.h) per backend; every failure prints the
// case on one line with the command that replays it. Exit code 1 when any case failed.
// Without arguments: the CI campaign (CPU, seeds 1:CI_SEEDS).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fuzz/fuzz_case.h"
#include "fuzz/fuzz_runner.h"

namespace {

constexpr uint64_t kCiSeeds = 300;

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "fusedmoe-fuzz: %s\nusage: fusedmoe-fuzz [--seeds A:B | --seed S] [--backend cpu|cuda|all] "
               "[--small] [--jobs N] [--max-seconds T] [--verbose]\n",
               why);
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fusedmoe;
  uint64_t first = 1, last = kCiSeeds;
  std::string backend_arg = "cpu";
  double max_seconds = 0.0;
  bool verbose = false, small = false;
  int jobs = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    if (a == "--seeds") {
      const std::string v = value();
      const size_t colon = v.find(':');
      if (colon == std::string::npos) usage("--seeds takes A:B");
      first = std::strtoull(v.substr(0, colon).c_str(), nullptr, 10);
      last = std::strtoull(v.substr(colon + 1).c_str(), nullptr, 10);
      if (last < first) usage("--seeds A:B needs A <= B");
    } else if (a == "--seed") {
      first = last = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--backend") {
      backend_arg = value();
      if (backend_arg != "cpu" && backend_arg != "cuda" && backend_arg != "all") usage("--backend is cpu, cuda or all");
    } else if (a == "--max-seconds") {
      max_seconds = std::atof(value().c_str());
    } else if (a == "--jobs") {
      jobs = std::max(1, std::atoi(value().c_str()));
    } else if (a == "--small") {
      small = true;
    } else if (a == "--verbose") {
      verbose = true;
    } else {
      usage(("unknown argument " + a).c_str());
    }
  }
  std::vector<Backend> backends;
  if (backend_arg != "cuda") backends.push_back(Backend::cpu);
  if (backend_arg != "cpu") {
    if (!backend_available(Backend::cuda)) {
      std::printf("fusedmoe-fuzz: no CUDA backend with a Hopper GPU here; %s\n",
                  backend_arg == "cuda" ? "nothing to run" : "running the CPU cases only");
      if (backend_arg == "cuda") return 1;
    } else {
      backends.push_back(Backend::cuda);
    }
  }
  const auto start = std::chrono::steady_clock::now();
  std::atomic<int64_t> passed{0}, failed{0}, faults{0};
  std::atomic<uint64_t> next_seed{first}, last_started{first - 1};
  std::mutex print;
  auto worker = [&] {
    for (uint64_t seed = next_seed++; seed <= last; seed = next_seed++) {
      if (max_seconds > 0.0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > max_seconds)
        return;
      for (uint64_t s = last_started.load(); s < seed && !last_started.compare_exchange_weak(s, seed);) {
      }
      for (Backend b : backends) {
        const fuzz::FuzzCase c = fuzz::draw_case(seed, b, small ? fuzz::kSmallBudget : fuzz::Budget{});
        const auto t0 = std::chrono::steady_clock::now();
        const fuzz::Outcome o = fuzz::run_case(c);
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        faults += c.fault != fuzz::Fault::none;
        std::lock_guard<std::mutex> lock(print);
        if (o.ok) {
          ++passed;
          if (verbose) std::printf("ok   seed=%llu %.0f ms %s\n", (unsigned long long)seed, ms, describe(c).c_str());
        } else {
          ++failed;
          std::printf("FAIL seed=%llu %s\n     %s\n     repro: fusedmoe-fuzz --seed %llu --backend %s%s\n",
                      (unsigned long long)seed, describe(c).c_str(), o.message.c_str(), (unsigned long long)seed,
                      backend_name(b), small ? " --small" : "");
        }
        std::fflush(stdout);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int j = 1; j < jobs; ++j) threads.emplace_back(worker);
  worker();
  for (std::thread& t : threads) t.join();
  const uint64_t seed = last_started.load() + 1;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("fusedmoe-fuzz: seeds %llu..%llu, %lld cases (%lld with a fault) in %.1f s\n",
              (unsigned long long)first, (unsigned long long)(seed - 1), (long long)(passed.load() + failed.load()),
              (long long)faults.load(), secs);
  std::printf("%lld passed, %lld failed\n", (long long)passed.load(), (long long)failed.load());
  return failed > 0 ? 1 : 0;
}
