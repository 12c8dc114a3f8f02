// The CUDA row plan (launch_plan) on its own: for random ids with masked (-1), out-of-range and
// unmapped experts, the counts, offsets and active list equal the host's count, and every valid
// (token, slot) has exactly one row inside its expert's range that names its token and expert.
// Covers the one-block plan and the multi-block plan (count, then scan and place) with partial last
// chunks and 1, 2, 4 and 8 scan items per thread, and the small-M work items (each active expert's
// rows cut every item_rows, in expert order). Outputs are poisoned before the call. And the route+plan kernel's
// one-token plan against the router and the plan kernel. Skips without a Hopper GPU.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cuda/kernels/kernels.h"
#include "cuda_test_util.h"

namespace fusedmoe::test {
namespace {

struct PlanCase {
  int64_t M;
  int top_k;
  int num_experts;  // global ids are drawn from [-2, num_experts + 2)
  bool map;         // expert_map: every third expert is not local, the rest in reverse order
  int item_rows;    // 0: no work items
};

void check_plan(const PlanCase& pc, uint64_t seed) {
  SCOPED_TRACE("M " + std::to_string(pc.M) + " top_k " + std::to_string(pc.top_k) + " E " +
               std::to_string(pc.num_experts) + (pc.map ? " mapped" : ""));
  const int64_t slots = pc.M * pc.top_k;
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(slots)), map;
  std::uniform_int_distribution<int32_t> pick(-2, pc.num_experts + 1);
  for (auto& id : ids) id = pick(rng);
  int num_local = pc.num_experts;
  if (pc.map) {
    num_local = 0;
    map.assign(static_cast<size_t>(pc.num_experts), -1);
    for (int e = pc.num_experts - 1; e >= 0; --e)
      if (e % 3 != 0) map[e] = num_local++;
  }
  auto local = [&](int32_t id) { return id < 0 || id >= pc.num_experts ? -1 : pc.map ? map[id] : id; };
  std::vector<int32_t> want_counts(static_cast<size_t>(num_local), 0);
  for (int32_t id : ids)
    if (local(id) >= 0) ++want_counts[local(id)];

  auto dev_ints = [](int64_t n, const std::vector<int32_t>* from = nullptr) {
    Buffer b = Buffer::empty(DType::i32, {std::max<int64_t>(n, 1)}, kGpu);
    if (from)
      cudaMemcpy(b.data_as<int32_t>(), from->data(), from->size() * sizeof(int32_t), cudaMemcpyHostToDevice);
    else
      cudaMemset(b.data_as<int32_t>(), 0x7f, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(int32_t));  // poison
    return b;
  };
  const Buffer d_ids = dev_ints(slots, &ids), d_map = pc.map ? dev_ints(pc.num_experts, &map) : Buffer{};
  Buffer counts = dev_ints(num_local + 1), offsets = dev_ints(num_local + 1), active = dev_ints(num_local + 1);
  Buffer slot_rows = dev_ints(slots), row_token = dev_ints(slots), row_expert = dev_ints(slots);
  Buffer scratch = dev_ints(cuda::plan_scratch_ints(slots, num_local));
  const int64_t max_items = cuda::plan_max_items(slots, num_local, pc.item_rows);
  const int64_t n_counters = cuda::kPlanCounterInts + max_items;  // the counters, then one per item
  Buffer items = dev_ints(4 * max_items), work_counters = dev_ints(n_counters);
  constexpr int64_t kZeroed = 700;  // the fused decode kernel's counters, zeroed by the plan on either path
  Buffer zeroed = dev_ints(kZeroed);
  cuda::RowPlan plan{counts.data_as<int32_t>(),
                     offsets.data_as<int32_t>(),
                     active.data_as<int32_t>(),
                     slot_rows.data_as<int32_t>(),
                     row_token.data_as<int32_t>(),
                     row_expert.data_as<int32_t>(),
                     reinterpret_cast<cuda::PlanItem*>(items.data_as<int32_t>()),
                     pc.item_rows,
                     static_cast<int>(max_items),
                     work_counters.data_as<int32_t>()};
  cuda::launch_plan(d_ids.data_as<const int32_t>(), pc.M, pc.top_k, pc.num_experts,
                    pc.map ? d_map.data_as<const int32_t>() : nullptr, num_local, plan, scratch.data_as<int32_t>(),
                    nullptr, zeroed.data_as<int32_t>(), kZeroed);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  auto host = [](const Buffer& b, int64_t n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    cudaMemcpy(v.data(), b.data_as<int32_t>(), v.size() * sizeof(int32_t), cudaMemcpyDeviceToHost);
    return v;
  };
  const auto h_counts = host(counts, num_local), h_offsets = host(offsets, num_local + 1),
             h_active = host(active, num_local), h_slot_rows = host(slot_rows, slots);
  int64_t total = 0;
  std::vector<int32_t> want_active;
  for (int e = 0; e < num_local; ++e) {
    ASSERT_EQ(h_counts[e], want_counts[e]) << "counts[" << e << "]";
    ASSERT_EQ(h_offsets[e], total) << "offsets[" << e << "]";
    total += want_counts[e];
    if (want_counts[e] > 0) want_active.push_back(e);
  }
  ASSERT_EQ(h_offsets[num_local], total);
  want_active.resize(static_cast<size_t>(num_local), -1);
  ASSERT_EQ(h_active, want_active);
  const auto h_row_token = host(row_token, total), h_row_expert = host(row_expert, total);
  std::vector<int> hits(static_cast<size_t>(total), 0);
  for (int64_t i = 0; i < slots; ++i) {
    const int e = local(ids[i]);
    const int32_t r = h_slot_rows[i];
    if (e < 0) {
      ASSERT_EQ(r, -1) << "slot " << i << " (id " << ids[i] << ") has no local expert";
      continue;
    }
    ASSERT_TRUE(r >= h_offsets[e] && r < h_offsets[e] + h_counts[e]) << "slot " << i << " row " << r;
    ASSERT_EQ(h_row_token[r], i / pc.top_k) << "row " << r;
    ASSERT_EQ(h_row_expert[r], e) << "row " << r;
    ++hits[r];
  }
  for (int64_t r = 0; r < total; ++r) ASSERT_EQ(hits[r], 1) << "row " << r;
  ASSERT_EQ(host(zeroed, kZeroed), std::vector<int32_t>(kZeroed, 0)) << "the counters asked for are zeroed";
  if (pc.item_rows == 0) {
    ASSERT_EQ(host(items, 1)[0], 0x7f7f7f7f) << "a plan without work items wrote items";
    ASSERT_EQ(host(work_counters, n_counters), std::vector<int32_t>(n_counters, 0x7f7f7f7f))
        << "... or the work counters";
    return;
  }
  std::vector<int32_t> want_items;  // {expert, first row, offsets[expert], counts[expert]}, then expert -1
  for (int e : want_active)
    for (int32_t r = 0; e >= 0 && r < want_counts[e]; r += pc.item_rows)
      want_items.insert(want_items.end(), {e, r, h_offsets[e], want_counts[e]});
  const int64_t n = static_cast<int64_t>(want_items.size()) / 4;
  ASSERT_LE(n, max_items);
  for (int64_t i = n; i < max_items; ++i) want_items.insert(want_items.end(), {-1, 0, 0, 0});
  ASSERT_EQ(host(items, 4 * max_items), want_items);
  std::vector<int32_t> want_counters(n_counters, 0);
  want_counters[2] = static_cast<int32_t>(n);
  ASSERT_EQ(host(work_counters, n_counters), want_counters)
      << "the work counters and the items' h2 counts are zeroed, the item count written";
}

TEST(CudaPlan, MatchesHostCountsOnOneAndManyBlocks) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const PlanCase cases[] = {
      {250, 4, 10, false, 32},     // 1000 slots: one block; work items of 32 rows
      {205, 5, 64, false, 8},      // 1025 slots: three chunks of 512, the last one slot
      {1000, 4, 10, false, 32},    // 4000: eight chunks of 512, the last partial
      {1100, 4, 10, false, 0},     // 4400: nine chunks of 512, the last partial
      {1100, 4, 10, true, 16},     //   with an expert map
      {8192, 8, 128, false, 0},    // qwen3-30b-a3b at 8192 tokens
      {8192, 8, 384, true, 8},     // 256 local experts of 384
      {3001, 3, 1000, false, 8},   // 2 scan items per thread (512 a chunk block)
      {2000, 5, 3000, true, 16},   // 2000 local experts: 4 items
      {1500, 4, 4000, false, 32},  // 8 items
      {32768, 8, 256, false, 0},   // 128 chunks of 2048 slots
      {1, 1, 8, false, 8},         // one slot
      {128, 8, 128, false, 16},    // qwen3-30b-a3b at 128 tokens
      // the one-block plan's block sizes (by_plan_block): 128, 256 and 512 threads
      {1, 8, 128, false, 8},    // qwen3-30b-a3b at 1 token: 128 threads
      {24, 8, 256, false, 16},  // deepseek-v3 at 24 tokens: 192 slots, 256 experts: 256 threads
      {50, 8, 450, true, 8},    // 400 slots, 300 local experts: 512 threads
      {120, 8, 1500, false, 8},  // 960 slots, 1500 experts: 1024 threads, 2 scan items each
      {100, 4, 3000, true, 0},   // 2000 local experts: 4 scan items each
  };
  for (size_t i = 0; i < std::size(cases); ++i) check_plan(cases[i], seed + i);
}

// A row plan's device arrays, poisoned, and their contents on the host.
struct PlanArrays {
  Buffer ints;  // ids, counts, offsets, active, slot_rows, row_token, row_expert, items, work_counters, zeroed
  Buffer weights;
  cuda::RowPlan plan{};
  int32_t *ids = nullptr, *zeroed = nullptr;
  int64_t n_zero = 0;

  PlanArrays(int top_k, int num_local, int item_rows) {
    const int64_t items = cuda::plan_max_items(top_k, num_local, item_rows);
    const int64_t sizes[] = {top_k, num_local, num_local + 1, num_local, top_k, top_k, top_k, 4 * items,
                             cuda::kPlanCounterInts + items, 40};
    int64_t total = 0;
    for (int64_t n : sizes) total += (n + 3) / 4 * 4;  // each array 16-byte aligned (PlanItem is)
    ints = Buffer::empty(DType::i32, {total}, kGpu);
    weights = Buffer::empty(DType::f32, {top_k}, kGpu);
    cudaMemset(ints.data_as<int32_t>(), 0x7f, static_cast<size_t>(total) * sizeof(int32_t));
    cudaMemset(weights.data_as<float>(), 0xff, static_cast<size_t>(top_k) * sizeof(float));  // NaN
    int32_t* at[std::size(sizes)];
    int32_t* p = ints.data_as<int32_t>();
    for (size_t i = 0; i < std::size(sizes); ++i) at[i] = p, p += (sizes[i] + 3) / 4 * 4;
    ids = at[0];
    plan = {at[1], at[2], at[3], at[4], at[5], at[6], reinterpret_cast<cuda::PlanItem*>(at[7]), item_rows,
            static_cast<int>(items), item_rows > 0 ? at[8] : nullptr};
    zeroed = at[9];
    n_zero = sizes[9];
  }
  std::vector<uint32_t> host() const {  // every int and weight's bits
    const size_t n_ints = ints.nbytes() / sizeof(int32_t), n_weights = weights.nbytes() / sizeof(float);
    std::vector<uint32_t> v(n_ints + n_weights);
    cudaMemcpy(v.data(), ints.data_as<int32_t>(), n_ints * sizeof(int32_t), cudaMemcpyDeviceToHost);
    cudaMemcpy(v.data() + n_ints, weights.data_as<float>(), n_weights * sizeof(float), cudaMemcpyDeviceToHost);
    return v;
  }
};

// The route+plan kernel's one-token plan (route_plan_one_token: the routing warp's picks ranked in registers, one
// barrier) against the router and the plan kernel (plan_block) on the same logits: every array of the plan, the ids
// and the weights equal bit for bit, for every method the warp router runs, 8 to 256 experts (1, 2, 4 and 8 slots a
// lane), top-1 to top-8, with and without an expert map (every third expert elsewhere), with and without work items,
// for random, tied, all-negative and NaN / +-inf logits, f32 and bf16.
TEST(CudaPlan, RoutePlanOfOneTokenEqualsRouteThenPlan) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const RoutingMethod methods[] = {RoutingMethod::softmax_topk,        RoutingMethod::topk_softmax,
                                   RoutingMethod::softmax_topk_renormalize, RoutingMethod::sigmoid_topk,
                                   RoutingMethod::sigmoid_topk_renormalize, RoutingMethod::llama4,
                                   RoutingMethod::deepseek_v3};
  std::mt19937_64 rng(seed);
  int n = 0;
  for (RoutingMethod m : methods)
    for (const int E : {8, 40, 64, 128, 256})
      for (const int k : {1, 4, 8})
        for (int kind = 0; kind < 4; ++kind) {
          if (m == RoutingMethod::llama4 && k != 1) continue;
          ++n;
          const bool mapped = n % 2 == 0, bf16_logits = n % 3 == 0;
          const int item_rows = n % 5 == 0 ? 0 : 8;
          SCOPED_TRACE(std::string(routing_method_name(m)) + ", " + std::to_string(E) + " experts, top-" +
                       std::to_string(k) + ", logits " + std::to_string(kind) + (mapped ? ", mapped" : "") +
                       (bf16_logits ? ", bf16" : "") + ", item rows " + std::to_string(item_rows));
          RoutingConfig rc;
          rc.method = m;
          rc.top_k = k;
          if (m == RoutingMethod::deepseek_v3) rc.num_expert_group = 4, rc.topk_group = 2, rc.renormalize = n % 2;
          const RoutingParams p = make_routing_params(rc, E);
          std::vector<float> logits(static_cast<size_t>(E));
          std::normal_distribution<float> normal(0.0f, 2.0f);
          for (int e = 0; e < E; ++e) {
            float& l = logits[e];
            l = normal(rng);
            if (kind == 1) l = std::round(std::clamp(l, -1.0f, 1.0f));  // ties
            if (kind == 2) l = -1000.0f - std::fabs(l);                 // all negative
            if (kind == 3 && e % 7 == 3) l = e % 3 == 0 ? NAN : e % 3 == 1 ? INFINITY : -INFINITY;
            if (bf16_logits) l = bf16_to_float(float_to_bf16(l));
          }
          Buffer d_logits = Buffer::empty(bf16_logits ? DType::bf16 : DType::f32, {E}, kGpu);
          if (bf16_logits) {
            std::vector<bfloat16> b(logits.size());
            for (size_t i = 0; i < b.size(); ++i) b[i] = float_to_bf16(logits[i]);
            cudaMemcpy(d_logits.data_as<void>(), b.data(), b.size() * sizeof(bfloat16), cudaMemcpyHostToDevice);
          } else {
            cudaMemcpy(d_logits.data_as<void>(), logits.data(), logits.size() * sizeof(float), cudaMemcpyHostToDevice);
          }
          std::vector<int32_t> map(static_cast<size_t>(E), -1);
          int num_local = E;
          if (mapped) {
            num_local = 0;
            for (int e = E - 1; e >= 0; --e)
              if (e % 3 != 1) map[e] = num_local++;
          }
          Buffer d_map = Buffer::empty(DType::i32, {E}, kGpu);
          cudaMemcpy(d_map.data_as<void>(), map.data(), map.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
          const int32_t* emap = mapped ? d_map.data_as<const int32_t>() : nullptr;
          PlanArrays chain(k, num_local, item_rows), fused(k, num_local, item_rows);
          cuda::launch_route(p, d_logits.data_as<void>(), bf16_logits, 1, chain.ids, chain.weights.data_as<float>(),
                             nullptr, /*block_router=*/false);
          cuda::launch_plan(chain.ids, 1, k, E, emap, num_local, chain.plan, nullptr, nullptr, chain.zeroed,
                            chain.n_zero);
          cuda::launch_route_plan(p, d_logits.data_as<void>(), bf16_logits, 1, emap, num_local, fused.ids,
                                  fused.weights.data_as<float>(), fused.plan, nullptr, fused.zeroed, fused.n_zero,
                                  /*beside_previous=*/false, /*block_router=*/false);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          ASSERT_EQ(chain.host(), fused.host());
        }
}

// The plan's scratch never shrinks as the batch grows (a workspace sized for the largest batch serves
// every smaller one), across the change of chunk size. Host only.
TEST(CudaPlan, ScratchGrowsWithTheBatch) {
  for (int64_t E : {int64_t(8), int64_t(256)}) {
    int64_t last = 0;
    for (int64_t slots = 1; slots <= 70000; ++slots) {
      const int64_t ints = cuda::plan_scratch_ints(slots, E);
      ASSERT_GE(ints, last) << "slots " << slots << " E " << E;
      ASSERT_EQ(ints % E, 0) << "slots " << slots;
      last = ints;
    }
    EXPECT_EQ(cuda::plan_scratch_ints(1024, E), 0);  // one block, no scratch
    EXPECT_GT(cuda::plan_scratch_ints(1025, E), 0);
  }
}

// plan_max_items sizes the small-M grid and the items buffer: on the host, for adversarial and
// random row counts, the items a plan lists never exceed it, and some distribution reaches it.
TEST(CudaPlan, MaxItemsBoundHoldsAndIsReached) {
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  std::mt19937_64 rng(seed);
  auto items_of = [](const std::vector<int64_t>& counts, int item_rows) {
    int64_t n = 0;
    for (int64_t c : counts) n += (c + item_rows - 1) / item_rows;
    return n;
  };
  for (int item_rows : {8, 16, 32})
    for (int64_t slots : {int64_t(1), int64_t(8), int64_t(127), int64_t(128), int64_t(1024), int64_t(8192)})
      for (int64_t E : {int64_t(8), int64_t(128), int64_t(256)}) {
        SCOPED_TRACE("slots " + std::to_string(slots) + " E " + std::to_string(E) + " rows " +
                     std::to_string(item_rows));
        const int64_t bound = cuda::plan_max_items(slots, E, item_rows);
        // The bound is reached: as many experts as possible with one row, the rest on one expert.
        const int64_t active = std::min(E, slots);
        std::vector<int64_t> most(static_cast<size_t>(E), 0);
        for (int64_t e = 0; e < active; ++e) most[e] = 1;
        most[0] += slots - active;
        ASSERT_EQ(items_of(most, item_rows), bound);
        // Every token on one expert; then random splits of the slots (some masked).
        std::vector<int64_t> one(static_cast<size_t>(E), 0);
        one[0] = slots;
        ASSERT_LE(items_of(one, item_rows), bound);
        for (int trial = 0; trial < 50; ++trial) {
          std::vector<int64_t> counts(static_cast<size_t>(E), 0);
          std::uniform_int_distribution<int64_t> pick(-1, E - 1);
          for (int64_t i = 0; i < slots; ++i)
            if (const int64_t e = pick(rng); e >= 0) ++counts[e];
          ASSERT_LE(items_of(counts, item_rows), bound);
        }
      }
  EXPECT_EQ(cuda::plan_max_items(100, 10, 0), 0) << "no items without a tile";
}

}  // namespace
}  // namespace fusedmoe::test
