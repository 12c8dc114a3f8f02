// Expert-parallel PrepareFinalize implementations on the CPU, over any Communicator:
//  - AllGather (naive DP/EP, modular): every rank gathers all ranks' tokens (quantized first
//    where the scheme quantizes activations), their ids and weights, runs its local experts on
//    all of them and reduce-scatters the weighted partial sums back to the owning ranks.
//  - AllToAll (modular): each token travels only to the ranks owning one of its experts, once
//    per rank, as one packed record (row, scales, ids, weights); the ranks return weighted
//    partial sums that the source adds up in rank order. Standard or batched format (the
//    received rows packed per local expert; an expert over capacity fails on every rank).
//  - AllGatherMonolithic: gathers hidden and router logits; the monolithic experts route and
//    compute their local experts; the partial outputs are reduce-scattered.
// Exchanges are sized by parallel.max_tokens_per_rank (T): every call first all-gathers the
// ranks' token counts, so a rank over T fails with the same error on every rank. Sums over
// ranks run in rank order, so results are deterministic (and equal EP = 1 within tolerance).
#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/cpu_backend.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"

namespace fusedmoe::cpu {
namespace {

// Token counts of every rank for this call; the same check (and message) on every rank.
std::vector<int64_t> gather_token_counts(const Communicator& comm, int64_t M, int64_t T, Workspace& ws) {
  const int n = comm.size();
  const Tensor counts = ws.take(DType::i64, {n});
  comm.all_gather(&M, counts.data(), sizeof(int64_t));
  std::vector<int64_t> c(counts.data_as<const int64_t>(), counts.data_as<const int64_t>() + n);
  for (int r = 0; r < n; ++r)
    FMOE_CHECK(c[r] <= T, "expert-parallel call: rank ", r, " passed ", c[r],
               " tokens, over parallel.max_tokens_per_rank=", T, " (every rank reports this)");
  return c;
}

// Copies `rows` rows of `row_bytes` into a zeroed [T, row_bytes] block and gathers the blocks.
Tensor gather_rows(const Communicator& comm, const void* src, int64_t rows, int64_t T, DType dtype,
                   std::initializer_list<int64_t> row_shape, Workspace& ws, uint8_t fill = 0) {
  int64_t row_elems = 1;
  for (int64_t d : row_shape) row_elems *= d;
  const size_t row_bytes = size_t(row_elems) * dtype_size(dtype);
  const Tensor send = ws.take(DType::u8, {std::max<int64_t>(1, T * int64_t(row_bytes))});
  std::memset(send.data(), fill, T * row_bytes);
  if (rows) std::memcpy(send.data(), src, rows * row_bytes);
  std::vector<int64_t> shape = {comm.size() * T};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  const Tensor recv = ws.take(dtype, shape);
  comm.all_gather(send.data(), recv.data(), T * row_bytes);
  return recv;
}

size_t gather_rows_bytes(int n, int64_t T, DType dtype, int64_t row_elems) {
  const int64_t bytes = T * row_elems * int64_t(dtype_size(dtype));
  return workspace_tensor_bytes(DType::u8, {std::max<int64_t>(1, bytes)}) +
         workspace_tensor_bytes(dtype, {n * T, row_elems});
}

// Byte sizes and offsets of all_to_all_v blocks of count[p] items of `item` bytes.
struct Blocks {
  std::vector<size_t> bytes, offsets;
  Blocks(const int64_t* count, int n, size_t item) : bytes(static_cast<size_t>(n)), offsets(static_cast<size_t>(n)) {
    size_t offset = 0;
    for (int p = 0; p < n; ++p) {
      bytes[p] = size_t(count[p]) * item;
      offsets[p] = offset;
      offset += bytes[p];
    }
  }
};

// Writes the first M rows of f32 [*, K] as bf16 into out.
void store_rows_bf16(const float* src, int64_t M, int64_t K, const Tensor& out) {
  bfloat16* dst = out.data_as<bfloat16>();
  for (int64_t i = 0; i < M * K; ++i) dst[i] = float_to_bf16(src[i]);
}

class EpBase {
 public:
  EpBase(const MoEConfig& config, const Communicator& comm)
      : config_(config), comm_(comm), n_(comm.size()), T_(config.parallel.max_tokens_per_rank) {
    FMOE_CHECK(comm.device() == Device::cpu(), "the CPU expert-parallel PrepareFinalize needs a CPU communicator, got ",
               comm.name(), " on ", comm.device().str());
  }

 protected:
  QuantScheme quant() const { return config_.quant; }
  DType act_dtype() const { return scheme_quantizes_activations(quant()) ? DType::fp8_e4m3 : DType::bf16; }
  int64_t scale_cols() const { return activation_scale_cols(quant(), config_.hidden_size); }

  MoEConfig config_;
  const Communicator& comm_;
  int n_;
  int64_t T_;
};

class PrepareFinalizeAllGather final : public ModularPrepareFinalize, EpBase {
 public:
  using EpBase::EpBase;
  std::string name() const override { return "cpu.PrepareFinalizeAllGather"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return Device::cpu(); }
  int num_dispatchers() const override { return n_; }
  int64_t max_prepared_tokens(int64_t) const override { return n_ * T_; }

  size_t workspace_bytes(int64_t M) const override {
    const int64_t K = config_.hidden_size, k = config_.routing.top_k, G = scale_cols();
    return workspace_tensor_bytes(DType::i64, {n_}) + quantized_rows_bytes(config_, M) +
           gather_rows_bytes(n_, T_, act_dtype(), K) + (G ? gather_rows_bytes(n_, T_, DType::f32, G) : 0) +
           gather_rows_bytes(n_, T_, DType::i32, k) + gather_rows_bytes(n_, T_, DType::f32, k) +
           workspace_tensor_bytes(DType::f32, {n_ * T_, K}) + workspace_tensor_bytes(DType::f32, {T_, K});
  }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor& static_input_scale, bool, Workspace& ws) const override {
    const int64_t M = hidden.size(0), K = config_.hidden_size, k = config_.routing.top_k, G = scale_cols();
    gather_token_counts(comm_, M, T_, ws);
    const QuantizedRows rows = quantize_input_rows(config_, hidden, topk_weights, static_input_scale, ws);
    PreparedActivations p;
    p.format = ActivationFormat::standard;
    p.a1q = gather_rows(comm_, rows.data.data(), M, T_, act_dtype(), {K}, ws);
    if (G) p.a1q_scale = gather_rows(comm_, rows.scales.data(), M, T_, DType::f32, {G}, ws);
    p.topk_ids = gather_rows(comm_, topk_ids.data(), M, T_, DType::i32, {k}, ws, 0xff);  // padding: id -1
    p.topk_weights = gather_rows(comm_, topk_weights.data(), M, T_, DType::f32, {k}, ws);
    return p;
  }

  void finalize(const ExpertsOutput& out, const PreparedActivations& prepared, const Tensor& output,
                Workspace& ws) const override {
    FMOE_CHECK(out.kind == ExpertsOutputKind::per_slot, name(), " finalizes per-slot expert outputs only");
    const int64_t K = config_.hidden_size;
    const Tensor partial = ws.take(DType::f32, {n_ * T_, K});
    reduce_per_slot_f32(config_, out.rows, prepared.topk_ids, prepared.topk_weights, partial.data_as<float>());
    const Tensor mine = ws.take(DType::f32, {T_, K});
    comm_.reduce_scatter_sum(partial.data_as<const float>(), mine.data_as<float>(), size_t(T_ * K));
    store_rows_bf16(mine.data_as<const float>(), output.size(0), K, output);
  }
};

class PrepareFinalizeAllToAll final : public ModularPrepareFinalize, EpBase {
 public:
  PrepareFinalizeAllToAll(const MoEConfig& config, const Communicator& comm) : EpBase(config, comm) {
    // Who owns each expert: every rank's expert_map, gathered once (a collective: all ranks
    // construct their PrepareFinalize together). Each expert must have exactly one owner.
    const int64_t E = config.num_experts;
    std::vector<int32_t> maps(static_cast<size_t>(n_ * E));
    comm.all_gather(config.parallel.expert_map.data(), maps.data(), size_t(E) * sizeof(int32_t));
    owner_.assign(size_t(E), -1);
    for (int r = 0; r < n_; ++r)
      for (int64_t e = 0; e < E; ++e)
        if (maps[r * E + e] >= 0) {
          FMOE_CHECK(owner_[e] < 0, "expert ", e, " is placed on rank ", owner_[e], " and on rank ", r,
                     "; each expert needs exactly one owner");
          owner_[e] = r;
        }
    for (int64_t e = 0; e < E; ++e)
      FMOE_CHECK(owner_[e] >= 0, "expert ", e, " is placed on no rank; each expert needs exactly one owner");
  }
  std::string name() const override { return "cpu.PrepareFinalizeAllToAll"; }
  ActivationFormat activation_format() const override { return config_.activation_format; }
  Device device() const override { return Device::cpu(); }
  int num_dispatchers() const override { return n_; }
  int64_t max_prepared_tokens(int64_t) const override { return n_ * T_; }

  size_t workspace_bytes(int64_t M) const override {
    const int64_t K = config_.hidden_size, k = config_.routing.top_k, G = scale_cols(), R = n_ * T_;
    const int64_t rec = record_bytes();
    return workspace_tensor_bytes(DType::i64, {n_}) + quantized_rows_bytes(config_, M) +
           workspace_tensor_bytes(DType::i64, {2 * n_ + 1 + R}) + workspace_tensor_bytes(DType::i64, {n_ * n_}) +
           2 * workspace_tensor_bytes(DType::u8, {std::max<int64_t>(1, R * rec)}) +
           workspace_tensor_bytes(act_dtype(), {R, K}) + workspace_tensor_bytes(DType::f32, {R, std::max<int64_t>(G, 1)}) +
           workspace_tensor_bytes(DType::i32, {R, k}) + workspace_tensor_bytes(DType::f32, {R, k}) +
           2 * workspace_tensor_bytes(DType::f32, {R, K}) + workspace_tensor_bytes(DType::f32, {T_, K}) +
           (batched() ? workspace_tensor_bytes(DType::i64, {2 * n_}) + batched_rows_bytes(config_) : 0);
  }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor& static_input_scale, bool, Workspace& ws) const override {
    const int64_t M = hidden.size(0), k = config_.routing.top_k, E = config_.num_experts;
    gather_token_counts(comm_, M, T_, ws);
    const QuantizedRows rows = quantize_input_rows(config_, hidden, topk_weights, static_input_scale, ws);
    // Dispatch plan: the tokens for each destination, ascending; each token at most once per rank.
    const int32_t* ids = topk_ids.data_as<const int32_t>();
    std::vector<std::vector<int64_t>> to(static_cast<size_t>(n_));
    for (int64_t t = 0; t < M; ++t) {
      uint64_t sent = 0;  // ranks this token already goes to (n <= 64 checked at construction)
      for (int64_t j = 0; j < k; ++j) {
        const int32_t id = ids[t * k + j];
        if (id < 0 || id >= E) continue;
        const int r = owner_[id];
        if (!((sent >> r) & 1u)) {
          to[r].push_back(t);
          sent |= uint64_t(1) << r;
        }
      }
    }
    // Bookkeeping for finalize: send counts [n], recv counts [n], S, token list [S].
    const Tensor info = ws.take(DType::i64, {2 * n_ + 1 + n_ * T_});
    int64_t* send_counts = info.data_as<int64_t>();
    int64_t* recv_counts = send_counts + n_;
    int64_t* tokens = send_counts + 2 * n_ + 1;
    int64_t S = 0;
    for (int r = 0; r < n_; ++r) {
      send_counts[r] = int64_t(to[r].size());
      for (int64_t t : to[r]) tokens[S++] = t;
    }
    send_counts[2 * n_] = S;
    // Every rank learns how many records it receives from each rank.
    const Tensor matrix = ws.take(DType::i64, {n_ * n_});
    comm_.all_gather(send_counts, matrix.data(), size_t(n_) * sizeof(int64_t));
    int64_t R = 0;
    for (int p = 0; p < n_; ++p) R += recv_counts[p] = matrix.data_as<const int64_t>()[p * n_ + comm_.rank()];
    // Pack, exchange, unpack.
    const int64_t rec = record_bytes();
    const Tensor send = ws.take(DType::u8, {std::max<int64_t>(1, n_ * T_ * rec)});
    const Tensor recv = ws.take(DType::u8, {std::max<int64_t>(1, n_ * T_ * rec)});
    for (int64_t s = 0; s < S; ++s) pack(rows, topk_ids, topk_weights, tokens[s], send.data_as<uint8_t>() + s * rec);
    const Blocks out_blocks(send_counts, n_, size_t(rec)), in_blocks(recv_counts, n_, size_t(rec));
    comm_.all_to_all_v(send.data(), out_blocks.bytes.data(), out_blocks.offsets.data(), recv.data(),
                       in_blocks.bytes.data(), in_blocks.offsets.data());
    PreparedActivations p = unpack(recv.data_as<const uint8_t>(), R, info, ws);
    if (!batched()) return p;
    // Batched: every rank learns whether any rank's expert overflows, so all fail alike.
    const BatchedOverflow mine = find_batched_overflow(config_, p.topk_ids);
    const int64_t flag[2] = {mine.expert, mine.rows};
    const Tensor flags = ws.take(DType::i64, {2 * n_});
    comm_.all_gather(flag, flags.data(), sizeof(flag));
    for (int r = 0; r < n_; ++r)
      if (const int64_t* f = flags.data_as<const int64_t>() + 2 * r; f[0] >= 0)
        FMOE_FAIL("rank ", r, ": local expert ", f[0], " received ", f[1],
                  " rows, over the batched capacity max_tokens_per_expert=", config_.max_tokens_per_expert,
                  " (every rank reports this)");
    const QuantizedRows received{p.a1q, p.a1q_scale};
    PreparedActivations b = pack_batched(config_, received, p.topk_ids, p.topk_weights, ws);
    b.dispatch = p.dispatch;
    return b;
  }

  void finalize(const ExpertsOutput& out, const PreparedActivations& prepared, const Tensor& output,
                Workspace& ws) const override {
    FMOE_CHECK(out.kind == (batched() ? ExpertsOutputKind::batched : ExpertsOutputKind::per_slot), name(),
               " finalizes ", batched() ? "batched" : "per-slot", " expert outputs only");
    const int64_t K = config_.hidden_size, M = output.size(0);
    const int64_t* send_counts = prepared.dispatch.data_as<const int64_t>();
    const int64_t* recv_counts = send_counts + n_;
    const int64_t S = send_counts[2 * n_];
    const int64_t* tokens = send_counts + 2 * n_ + 1;
    // Weighted partial sums of the received tokens over this rank's experts, sent back home.
    const Tensor partial = ws.take(DType::f32, {n_ * T_, K});
    if (batched())
      reduce_batched_f32(config_, out.rows, prepared.topk_ids, prepared.topk_weights, partial.data_as<float>());
    else
      reduce_per_slot_f32(config_, out.rows, prepared.topk_ids, prepared.topk_weights, partial.data_as<float>());
    const Tensor back = ws.take(DType::f32, {n_ * T_, K});
    const size_t row = size_t(K) * sizeof(float);
    const Blocks out_blocks(recv_counts, n_, row), in_blocks(send_counts, n_, row);  // the reverse route
    comm_.all_to_all_v(partial.data(), out_blocks.bytes.data(), out_blocks.offsets.data(), back.data(),
                       in_blocks.bytes.data(), in_blocks.offsets.data());
    // Combine in rank order (the token list is grouped by destination rank, ascending).
    const Tensor acc = ws.take(DType::f32, {std::max<int64_t>(M, 1), K});
    float* a = acc.data_as<float>();
    std::fill(a, a + M * K, 0.0f);
    const float* b = back.data_as<const float>();
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < K; ++i) a[tokens[s] * K + i] += b[s * K + i];
    store_rows_bf16(a, M, K, output);
  }

 private:
  bool batched() const { return config_.activation_format == ActivationFormat::batched; }

  int64_t record_bytes() const {
    const int64_t K = config_.hidden_size, k = config_.routing.top_k;
    return K * int64_t(dtype_size(act_dtype())) + scale_cols() * 4 + k * 8;
  }

  void pack(const QuantizedRows& rows, const Tensor& ids, const Tensor& weights, int64_t t, uint8_t* dst) const {
    const int64_t K = config_.hidden_size, k = config_.routing.top_k, G = scale_cols();
    const size_t row_bytes = size_t(K) * dtype_size(act_dtype());
    std::memcpy(dst, rows.data.data_as<const uint8_t>() + t * row_bytes, row_bytes);
    dst += row_bytes;
    if (G) std::memcpy(dst, rows.scales.data_as<const float>() + t * G, G * 4), dst += G * 4;
    std::memcpy(dst, ids.data_as<const int32_t>() + t * k, k * 4);
    std::memcpy(dst + k * 4, weights.data_as<const float>() + t * k, k * 4);
  }

  PreparedActivations unpack(const uint8_t* src, int64_t R, const Tensor& info, Workspace& ws) const {
    const int64_t K = config_.hidden_size, k = config_.routing.top_k, G = scale_cols(), cap = n_ * T_;
    const size_t row_bytes = size_t(K) * dtype_size(act_dtype());
    const Tensor data = ws.take(act_dtype(), {cap, K});
    const Tensor scales = ws.take(DType::f32, {cap, std::max<int64_t>(G, 1)});
    const Tensor ids = ws.take(DType::i32, {cap, k});
    const Tensor weights = ws.take(DType::f32, {cap, k});
    const int64_t rec = record_bytes();
    for (int64_t r = 0; r < R; ++r) {
      const uint8_t* s = src + r * rec;
      std::memcpy(data.data_as<uint8_t>() + r * row_bytes, s, row_bytes);
      s += row_bytes;
      if (G) std::memcpy(scales.data_as<float>() + r * G, s, G * 4), s += G * 4;
      std::memcpy(ids.data_as<int32_t>() + r * k, s, k * 4);
      std::memcpy(weights.data_as<float>() + r * k, s + k * 4, k * 4);
    }
    PreparedActivations p;
    p.format = ActivationFormat::standard;
    p.a1q = Tensor(data.data(), act_dtype(), {R, K});
    if (G) p.a1q_scale = Tensor(scales.data(), DType::f32, {R, G});
    p.topk_ids = Tensor(ids.data(), DType::i32, {R, k});
    p.topk_weights = Tensor(weights.data(), DType::f32, {R, k});
    p.dispatch = info;
    return p;
  }

  std::vector<int> owner_;
};

class PrepareFinalizeAllGatherMonolithic final : public MonolithicPrepareFinalize, EpBase {
 public:
  using EpBase::EpBase;
  std::string name() const override { return "cpu.PrepareFinalizeAllGatherMonolithic"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return Device::cpu(); }
  int num_dispatchers() const override { return n_; }
  int64_t max_prepared_tokens(int64_t) const override { return n_ * T_; }

  size_t workspace_bytes(int64_t) const override {
    const int64_t K = config_.hidden_size, E = config_.num_experts;
    return workspace_tensor_bytes(DType::i64, {n_}) + gather_rows_bytes(n_, T_, DType::bf16, K) +
           gather_rows_bytes(n_, T_, DType::f32, E) + workspace_tensor_bytes(DType::bf16, {n_ * T_, K}) +
           workspace_tensor_bytes(DType::f32, {n_ * T_, K}) + workspace_tensor_bytes(DType::f32, {T_, K});
  }

  Prepared prepare(const Tensor& hidden, const Tensor& router_logits, Workspace& ws) const override {
    const int64_t M = hidden.size(0), K = config_.hidden_size, E = config_.num_experts;
    gather_token_counts(comm_, M, T_, ws);
    // Logits travel as f32 (bf16 logits widen exactly); padded rows are zero and discarded.
    Tensor logits32 = router_logits;
    if (router_logits.dtype() == DType::bf16) {
      logits32 = ws.take(DType::f32, {M, E});
      for (int64_t i = 0; i < M * E; ++i)
        logits32.data_as<float>()[i] = bf16_to_float(router_logits.data_as<const bfloat16>()[i]);
    }
    return {gather_rows(comm_, hidden.data(), M, T_, DType::bf16, {K}, ws),
            gather_rows(comm_, logits32.data(), M, T_, DType::f32, {E}, ws)};
  }

  Tensor experts_output(const Tensor&, int64_t num_prepared_tokens, Workspace& ws) const override {
    return ws.take(DType::bf16, {num_prepared_tokens, config_.hidden_size});
  }

  void finalize(const Tensor& experts_output, const Tensor& output, Workspace& ws) const override {
    const int64_t K = config_.hidden_size, rows = experts_output.size(0);
    const Tensor partial = ws.take(DType::f32, {rows, K});
    for (int64_t i = 0; i < rows * K; ++i)
      partial.data_as<float>()[i] = bf16_to_float(experts_output.data_as<const bfloat16>()[i]);
    const Tensor mine = ws.take(DType::f32, {T_, K});
    comm_.reduce_scatter_sum(partial.data_as<const float>(), mine.data_as<float>(), size_t(T_ * K));
    store_rows_bf16(mine.data_as<const float>(), output.size(0), K, output);
  }
};

}  // namespace

std::unique_ptr<PrepareFinalize> make_ep_prepare_finalize(const MoEConfig& config, const Communicator& comm,
                                                          bool monolithic) {
  FMOE_CHECK(comm.size() <= 64, "expert parallelism handles up to 64 ranks, got ", comm.size());
  FMOE_CHECK(config.activation_format == ActivationFormat::standard ||
                 (!monolithic && config.parallel.ep_dispatch == EpDispatch::all_to_all),
             "the batched activation format under expert parallelism needs the modular all-to-all PrepareFinalize");
  if (monolithic) return std::make_unique<PrepareFinalizeAllGatherMonolithic>(config, comm);
  if (config.parallel.ep_dispatch == EpDispatch::all_gather)
    return std::make_unique<PrepareFinalizeAllGather>(config, comm);
  return std::make_unique<PrepareFinalizeAllToAll>(config, comm);
}

}  // namespace fusedmoe::cpu
