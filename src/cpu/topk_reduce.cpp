// Top-k weight and reduce on the CPU: per-slot (standard) and batched expert outputs.
// Slots whose id is invalid or not local are skipped, never read.
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/thread_pool.h"
#include "fusedmoe/formats.h"

namespace fusedmoe::cpu {
namespace {

// Sums the valid slots of token t in slot order into acc[K].
template <class RowOf>
void reduce_token(const MoEConfig& c, int64_t t, const int32_t* ids, const float* weights, RowOf row_of,
                  std::vector<float>& acc) {
  const int64_t K = c.hidden_size, k = c.routing.top_k;
  const int32_t* map = c.parallel.expert_map.defined() ? c.parallel.expert_map.data_as<const int32_t>() : nullptr;
  const bool on_input = c.apply_router_weight_on_input();
  std::fill(acc.begin(), acc.end(), 0.0f);
  for (int64_t s = 0; s < k; ++s) {
    const int32_t e = local_expert_of(ids[t * k + s], c.num_experts, map);
    if (e < 0) continue;
    const float* y = row_of(t, s, e);
    const float w = on_input ? 1.0f : weights[t * k + s];
    for (int64_t i = 0; i < K; ++i) acc[i] += w * y[i];
  }
}

void store_bf16(const std::vector<float>& acc, int64_t t, bfloat16* out) {
  const int64_t K = static_cast<int64_t>(acc.size());
  for (int64_t i = 0; i < K; ++i) out[t * K + i] = float_to_bf16(acc[i]);
}

// Reduces every token (rows located by row_of) and hands each f32 row to store(t, acc).
template <class RowOf, class Store>
void reduce_tokens(const MoEConfig& c, const Tensor& topk_ids, const Tensor& topk_weights, RowOf row_of, Store store) {
  parallel_for(topk_ids.size(0), [&](int64_t t) {
    thread_local std::vector<float> acc;
    acc.resize(static_cast<size_t>(c.hidden_size));
    reduce_token(c, t, topk_ids.data_as<const int32_t>(), topk_weights.data_as<const float>(), row_of, acc);
    store(t, acc);
  });
}

auto bf16_rows(const Tensor& out) {
  return [p = out.data_as<bfloat16>()](int64_t t, const std::vector<float>& acc) { store_bf16(acc, t, p); };
}
auto f32_rows(float* out) {
  return [out](int64_t t, const std::vector<float>& acc) { std::copy(acc.begin(), acc.end(), out + t * acc.size()); };
}

// Per-slot output: row (t, s) of f32 [M, k, K].
auto per_slot_row(const MoEConfig& c, const Tensor& per_slot, int64_t k) {
  return [y = per_slot.data_as<const float>(), k, K = c.hidden_size](int64_t t, int64_t s, int32_t) {
    return y + (t * k + s) * K;
  };
}

// Batched output: each (token, slot) at its position in its expert's batch, token-then-slot
// order as prepare packed it.
std::vector<int64_t> batch_positions(const MoEConfig& c, const Tensor& topk_ids) {
  const int64_t n = topk_ids.numel(), E = c.num_local_experts();
  const int32_t* ids = topk_ids.data_as<const int32_t>();
  const int32_t* map = c.parallel.expert_map.defined() ? c.parallel.expert_map.data_as<const int32_t>() : nullptr;
  std::vector<int64_t> position(static_cast<size_t>(n), -1), fill(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < n; ++i)
    if (const int32_t e = local_expert_of(ids[i], c.num_experts, map); e >= 0) position[i] = fill[e]++;
  return position;
}

template <class Store>
void reduce_batched_into(const MoEConfig& c, const Tensor& batched, const Tensor& topk_ids,
                         const Tensor& topk_weights, Store store) {
  const std::vector<int64_t> position = batch_positions(c, topk_ids);
  const float* y = batched.data_as<const float>();
  const int64_t k = topk_ids.size(1), K = c.hidden_size, T = c.max_tokens_per_expert;
  reduce_tokens(
      c, topk_ids, topk_weights,
      [&](int64_t t, int64_t s, int32_t e) { return y + (e * T + position[t * k + s]) * K; }, store);
}

}  // namespace

void reduce_per_slot(const MoEConfig& c, const Tensor& per_slot, const Tensor& topk_ids, const Tensor& topk_weights,
                     const Tensor& out) {
  reduce_tokens(c, topk_ids, topk_weights, per_slot_row(c, per_slot, topk_ids.size(1)), bf16_rows(out));
}

void reduce_per_slot_f32(const MoEConfig& c, const Tensor& per_slot, const Tensor& topk_ids, const Tensor& topk_weights,
                         float* out) {
  reduce_tokens(c, topk_ids, topk_weights, per_slot_row(c, per_slot, topk_ids.size(1)), f32_rows(out));
}

void reduce_batched(const MoEConfig& c, const Tensor& batched, const Tensor& topk_ids, const Tensor& topk_weights,
                    const Tensor& out) {
  reduce_batched_into(c, batched, topk_ids, topk_weights, bf16_rows(out));
}

void reduce_batched_f32(const MoEConfig& c, const Tensor& batched, const Tensor& topk_ids, const Tensor& topk_weights,
                        float* out) {
  reduce_batched_into(c, batched, topk_ids, topk_weights, f32_rows(out));
}

}  // namespace fusedmoe::cpu
