// fusedmoe-bench: runs one MoE layer of a real model shape on synthetic seeded weights,
// checks sampled tokens against the float64 reference and reports time, TFLOP/s, GB/s and
// % of this machine's measured roofline per token count. Each timed forward follows a write
// of twice the last-level cache, so its weights come from memory; the time is the median.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>
#include <unistd.h>

#include "bench/ep_bench.h"
#include "bench/ep_bench_cuda.h"
#include "bench/presets.h"
#include "bench/roofline.h"
#include "cpu/amx_gemm.h"
#include "fusedmoe/fusedmoe.h"
#include "testing/synthetic.h"

using namespace fusedmoe;

namespace {

struct Options {
  std::string model = "qwen3-30b-a3b";
  bool model_given = false;
  std::vector<int64_t> tokens = {1, 16, 64};
  bool tokens_given = false;
  std::optional<QuantScheme> quant;
  Backend backend = Backend::auto_select;
  bool monolithic = false;
  bool batched = false;
  int64_t num_experts = 0;
  int ep = 1;
  std::string json;
  uint64_t seed = 1;
  int iters = 0;  // timed forwards per count; 0: at least 5, up to 20 or 0.5 s of forwards
};

const char* kUsage =
    "usage: fusedmoe-bench [--model NAME] [--tokens 1,16,128] [--quant bf16|fp8-tensor|fp8-channel|fp8-block|nvfp4|mxfp4]\n"
    "                      [--backend auto|cpu|cuda] [--monolithic] [--format standard|batched] [--num-experts N]\n"
    "                      [--ep N] [--json FILE] [--seed S] [--iters N]\n"
    "--format batched: the [local experts, capacity, hidden] activation format (capacity = the tokens that can\n"
    "reach a rank: the largest --tokens, times N with --ep N).\n"
    "--ep N runs N in-process expert-parallel ranks (tokens are per rank) and times dispatch and combine;\n"
    "with --backend cuda, N GPUs of this host (one process each, NCCL), next to NCCL's own all-to-all.\n"
    "--iters N times exactly N forwards per count (default: at least 5, up to 20 or half a second of forwards); each\n"
    "follows a cache flush, and the median is reported.\n"
    "With no arguments: qwen3-30b-a3b with 32 experts at 1, 16 and 64 tokens.\n";

std::vector<int64_t> parse_tokens(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  for (std::string part; std::getline(ss, part, ',');) {
    char* end = nullptr;
    const long long n = std::strtoll(part.c_str(), &end, 10);
    FMOE_CHECK(end && *end == '\0' && n >= 1, "--tokens takes a comma-separated list of counts >= 1, got '", s, "'");
    v.push_back(n);
  }
  FMOE_CHECK(!v.empty(), "--tokens needs at least one count");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      FMOE_CHECK(i + 1 < argc, a, " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else if (a == "--model") {
      o.model = value(), o.model_given = true;
    } else if (a == "--tokens") {
      o.tokens = parse_tokens(value()), o.tokens_given = true;
    } else if (a == "--quant") {
      const std::string q = value();
      o.quant = parse_quant_scheme(q);
      FMOE_CHECK(o.quant.has_value(), "--quant must be bf16|fp8-tensor|fp8-channel|fp8-block|nvfp4|mxfp4, got ", q);
    } else if (a == "--backend") {
      const std::string b = value();
      const auto backend = parse_backend(b);
      FMOE_CHECK(backend.has_value(), "--backend must be auto|cpu|cuda, got ", b);
      o.backend = *backend;
    } else if (a == "--monolithic") {
      o.monolithic = true;
    } else if (a == "--format") {
      const std::string f = value();
      FMOE_CHECK(f == "standard" || f == "batched", "--format must be standard|batched, got ", f);
      o.batched = f == "batched";
    } else if (a == "--num-experts") {
      o.num_experts = std::atoll(value().c_str());
      FMOE_CHECK(o.num_experts >= 1, "--num-experts must be >= 1");
    } else if (a == "--ep") {
      o.ep = std::atoi(value().c_str());
      FMOE_CHECK(o.ep >= 1 && o.ep <= 64, "--ep must be in [1, 64], got ", o.ep);
    } else if (a == "--json") {
      o.json = value();
    } else if (a == "--seed") {
      o.seed = std::strtoull(value().c_str(), nullptr, 10);
    } else if (a == "--iters") {
      o.iters = std::atoi(value().c_str());
      FMOE_CHECK(o.iters >= 1 && o.iters <= 1000, "--iters must be in [1, 1000], got ", o.iters);
    } else {
      FMOE_FAIL("unknown argument '", a, "'\n", kUsage);
    }
  }
  if (!o.model_given && o.num_experts == 0) o.num_experts = 32;
  return o;
}

double available_memory_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long long kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit)
    if (key == "MemAvailable:") return double(kb) * 1024.0;
  return double(sysconf(_SC_AVPHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
}

struct Row {
  int64_t tokens;
  double seconds, flops, bytes, floor_seconds, max_error, tolerance;
  int64_t checked_tokens;
  bool within_tolerance;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) try {
  const Options opt = parse(argc, argv);
  const auto preset = bench::find_preset(opt.model);
  if (!preset) {
    std::string names;
    for (const auto& p : bench::model_presets()) names += " " + p.name;
    FMOE_FAIL("--model must be one of:", names, "; got ", opt.model);
  }
  const QuantScheme quant = opt.quant.value_or(preset->native_quant);
  const int64_t E = opt.num_experts > 0 ? opt.num_experts : preset->num_experts;
  MoEConfig config = bench::preset_config(*preset, quant, E);
  const int64_t K = config.hidden_size, max_tokens = *std::max_element(opt.tokens.begin(), opt.tokens.end());
  if (opt.batched) {  // the EP benches set the capacity per token count
    FMOE_CHECK(!opt.monolithic, "--format batched needs modular experts; drop --monolithic");
    config.activation_format = ActivationFormat::batched;
    config.max_tokens_per_expert = max_tokens;
  }

#ifdef FUSEDMOE_WITH_NCCL
  if (opt.ep > 1 && opt.backend == Backend::cuda) {  // one process per GPU; weights made on the devices
    FMOE_CHECK(!opt.monolithic, "--ep times the modular PrepareFinalize; drop --monolithic");
    bench::EpCudaBenchOptions ep;
    ep.ranks = opt.ep;
    ep.tokens_per_rank = opt.tokens;
    ep.seed = opt.seed;
    return bench::run_ep_bench_cuda(config, ep);
  }
#endif
  // Memory: weights in the scheme's layout plus the largest forward's workspace.
  const double weight_bytes = double(expert_weight_bytes(config, E));
  const double per_expert = double(expert_weight_bytes(config, 1));
  const double available = available_memory_bytes();
  const double activations = double(max_tokens) * double(config.routing.top_k) *
                             double(K + config.w13_rows() + 2 * config.intermediate_size + K) * 4.0;
  if (weight_bytes + activations > 0.85 * available) {
    const int64_t fit = std::max<int64_t>(1, int64_t((0.85 * available - activations) / per_expert));
    FMOE_FAIL(preset->name, " with ", quant_scheme_name(quant), " weights does not fit: ", E, " experts take ",
              weight_bytes / (1 << 30), " GiB plus ", activations / (1 << 30),
              " GiB of activations, over 85% of the ", available / (1 << 30),
              " GiB available; run with --num-experts ", std::min(fit, E - 1), " or fewer");
  }

  std::fprintf(stderr, "measuring this machine's roofline (copy bandwidth, f32 FMA and AMX peaks)...\n");
  const bench::Roofline roof = bench::measure_roofline();
  // The compute roof of the GEMMs the CPU backend runs for this scheme: AMX tiles or f32 FMAs.
  const bool on_amx = cpu::amx::enabled();
  const double compute_roof = on_amx ? roof.amx_flops_per_s : roof.fma_flops_per_s;

  // Calibration batch for fp8-tensor static scales: the routing of the largest batch.
  RoutingConfig routing = config.routing;
  Buffer bias;
  if (preset->correction_bias) {
    bias = testing::random_f32({E}, opt.seed ^ 0xb1a5, 0.1f);
    config.routing.correction_bias = bias.view();
  }
  const Buffer calib_hidden = testing::random_bf16({std::min<int64_t>(max_tokens, 8), K}, opt.seed ^ 0xca1b);
  const Buffer calib_logits = testing::random_f32({calib_hidden.view().size(0), E}, opt.seed ^ 0x1091);
  const Buffer calib_ids = Buffer::empty(DType::i32, {calib_hidden.view().size(0), config.routing.top_k});
  const Buffer calib_w = Buffer::empty(DType::f32, {calib_hidden.view().size(0), config.routing.top_k});
  route(config.routing, calib_logits, calib_ids, calib_w);

  std::fprintf(stderr, "generating %s weights: %lld experts, %.2f GiB\n", quant_scheme_name(quant),
               static_cast<long long>(E), weight_bytes / (1 << 30));
  testing::SyntheticWeightOptions wopt;
  wopt.with_bias = preset->biases;
  wopt.calibration_hidden = calib_hidden.view();
  wopt.calibration_ids = calib_ids.view();
  const double gen_start = now_s();
  wopt.progress = [&, last = 0.0](int64_t done, int64_t total) mutable {
    if (now_s() - last > 2.0 || done == total) {
      last = now_s();
      std::fprintf(stderr, "\r  experts %lld/%lld%s", static_cast<long long>(done), static_cast<long long>(total),
                   done == total ? "\n" : "");
    }
  };
  const OwnedExpertWeights weights = testing::synthetic_expert_weights(config, opt.seed, wopt);
  std::fprintf(stderr, "  generated in %.1f s\n", now_s() - gen_start);

  if (opt.ep > 1) {
    FMOE_CHECK(!opt.monolithic, "--ep times the modular all-to-all PrepareFinalize; drop --monolithic");
    FMOE_CHECK(E >= opt.ep, "--ep ", opt.ep, " needs at least that many experts, got ", E);
    bench::EpBenchOptions ep;
    ep.ranks = opt.ep;
    ep.tokens_per_rank = opt.tokens;
    ep.seed = opt.seed;
    return bench::run_ep_bench(config, weights.weights, ep);
  }

  KernelOptions kopt;
  kopt.backend = opt.backend;
  kopt.use_monolithic = opt.monolithic;
  const FusedMoEKernel kernel = make_kernel(config, weights.weights, kopt);
  const Tolerance tol = tolerance_for(quant);

  bench::CacheFlush flush;
  std::vector<Row> rows;
  for (int64_t M : opt.tokens) {
    std::fprintf(stderr, "tokens %lld: running\n", static_cast<long long>(M));
    const Buffer hidden = testing::random_bf16({M, K}, opt.seed * 31 + M);
    const Buffer logits = testing::random_f32({M, E}, opt.seed * 37 + M);
    const Buffer out = Buffer::empty(DType::bf16, {M, K});
    const Buffer workspace = Buffer::bytes(kernel.workspace_bytes(M));
    kernel.forward(hidden, logits, out, workspace);  // warm-up
    std::vector<double> times;
    double timed = 0.0;
    do {
      flush.run();
      const double t0 = now_s();
      kernel.forward(hidden, logits, out, workspace);
      times.push_back(now_s() - t0);
      timed += times.back();
    } while (opt.iters > 0 ? int(times.size()) < opt.iters
                           : times.size() < 5 || (timed < 0.5 && times.size() < 20));
    std::sort(times.begin(), times.end());
    const double seconds = times[times.size() / 2];

    // Routing of this batch, for the reference and the traffic/FLOP counts.
    const Buffer ids = Buffer::empty(DType::i32, {M, config.routing.top_k});
    const Buffer tw = Buffer::empty(DType::f32, {M, config.routing.top_k});
    route(config.routing, logits, ids, tw);
    std::vector<char> touched(static_cast<size_t>(E), 0);
    int64_t slots = 0;
    for (int64_t i = 0; i < ids.view().numel(); ++i) {
      touched[ids.data_as<int32_t>()[i]] = 1;
      ++slots;
    }
    const int64_t experts_touched = std::count(touched.begin(), touched.end(), 1);
    const double flops = 2.0 * double(slots) *
                         double(config.w13_rows() * K + K * config.intermediate_size);
    const double bytes = double(experts_touched) * per_expert + double(M) * double(K) * 4.0 + double(M * E) * 4.0;
    const double floor_s = std::max(bytes / roof.copy_bytes_per_s, flops / compute_roof);

    // Reference check on up to 4 tokens spread over the batch.
    std::vector<int64_t> sample = {0, M / 3, (2 * M) / 3, M - 1};
    std::sort(sample.begin(), sample.end());
    sample.erase(std::unique(sample.begin(), sample.end()), sample.end());
    const std::vector<double> ref = reference_moe(config, weights.weights, hidden, ids, tw, sample);
    double ref_max = 0.0, worst = 0.0;
    for (double v : ref) ref_max = std::max(ref_max, std::fabs(v));
    bool ok = true;
    for (size_t s = 0; s < sample.size(); ++s)
      for (int64_t i = 0; i < K; ++i) {
        const double r = ref[s * K + i], o = bf16_to_float(out.data_as<bfloat16>()[sample[s] * K + i]);
        const double err = std::fabs(o - r);
        worst = std::max(worst, err / std::max(ref_max, 1e-30));
        if (!(err <= tol.atol * ref_max + tol.rtol * std::fabs(r))) ok = false;
      }
    rows.push_back({M, seconds, flops, bytes, floor_s, worst, tol.atol, static_cast<int64_t>(sample.size()), ok});
  }

  std::printf("fusedmoe-bench  model=%s quant=%s experts=%lld top_k=%d K=%lld I=%lld backend=%s path=%s\n",
              preset->name.c_str(), quant_scheme_name(quant), static_cast<long long>(E), config.routing.top_k,
              static_cast<long long>(K), static_cast<long long>(config.intermediate_size),
              backend_name(opt.backend == Backend::auto_select ? Backend::cpu : opt.backend),
              opt.monolithic ? "monolithic" : opt.batched ? "modular, batched format" : "modular");
  std::printf("machine: %d threads, copy %.1f GB/s, f32 FMA peak %.1f GFLOP/s", roof.threads,
              roof.copy_bytes_per_s / 1e9, roof.fma_flops_per_s / 1e9);
  if (roof.amx_flops_per_s > 0) std::printf(", AMX bf16 peak %.1f GFLOP/s", roof.amx_flops_per_s / 1e9);
  std::printf(" (measured); GEMMs on %s; caches flushed (%.0f MiB written) before each timed forward\n",
              on_amx ? "AMX" : "f32 FMA", double(bench::cache_flush_bytes()) / (1 << 20));
  std::printf("%8s %12s %10s %10s %12s %12s %8s\n", "tokens", "time_ms", "TFLOP/s", "GB/s", "%roofline", "max_err",
              "check");
  bool all_ok = true;
  for (const Row& r : rows) {
    all_ok &= r.within_tolerance;
    std::printf("%8lld %12.3f %10.4f %10.2f %11.1f%% %12.2e %8s\n", static_cast<long long>(r.tokens),
                r.seconds * 1e3, r.flops / r.seconds / 1e12, r.bytes / r.seconds / 1e9,
                100.0 * r.floor_seconds / r.seconds, r.max_error, r.within_tolerance ? "ok" : "FAIL");
  }
  std::printf("max_err = max |out - ref| / max |ref| over up to %lld sampled tokens per count vs the float64 reference; "
              "tolerance atol %.0e rtol %.0e\n",
              static_cast<long long>(rows.empty() ? 0 : rows.back().checked_tokens), tol.atol, tol.rtol);

  if (!opt.json.empty()) {
    std::ofstream js(opt.json);
    FMOE_CHECK(js.good(), "--json: cannot write ", opt.json);
    js << "{\n  \"model\": \"" << preset->name << "\",\n  \"quant\": \"" << quant_scheme_name(quant)
       << "\",\n  \"num_experts\": " << E << ",\n  \"top_k\": " << config.routing.top_k
       << ",\n  \"hidden_size\": " << K << ",\n  \"intermediate_size\": " << config.intermediate_size
       << ",\n  \"backend\": \"cpu\",\n  \"path\": \"" << (opt.monolithic ? "monolithic" : "modular")
       << "\",\n  \"seed\": " << opt.seed << ",\n  \"threads\": " << roof.threads
       << ",\n  \"copy_bytes_per_s\": " << roof.copy_bytes_per_s << ",\n  \"fma_flops_per_s\": " << roof.fma_flops_per_s
       << ",\n  \"amx_flops_per_s\": " << roof.amx_flops_per_s << ",\n  \"gemms\": \"" << (on_amx ? "amx" : "f32_fma")
       << "\",\n  \"cache_flush_bytes\": " << bench::cache_flush_bytes() << ",\n  \"rows\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      js << "    {\"tokens\": " << r.tokens << ", \"seconds\": " << r.seconds << ", \"flops\": " << r.flops
         << ", \"bytes\": " << r.bytes << ", \"floor_seconds\": " << r.floor_seconds
         << ", \"max_error\": " << r.max_error << ", \"within_tolerance\": " << (r.within_tolerance ? "true" : "false")
         << "}" << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    js << "  ]\n}\n";
  }
  if (!all_ok) {
    std::fprintf(stderr, "error: output outside the tolerance of the float64 reference\n");
    return 1;
  }
  return 0;
} catch (const fusedmoe::Error& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 2;
}
