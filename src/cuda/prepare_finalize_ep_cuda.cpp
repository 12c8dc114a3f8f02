// Expert-parallel PrepareFinalize on CUDA over a GPU Communicator (NCCL). Modular experts:
//  - all_to_all: each token travels once to every rank that owns one of its experts; the ranks
//    send back weighted partial sums as bf16 rows, which the home rank adds in rank order in f32.
//    A rank's own slab and own partial sums never go through NCCL: the kernels read them where
//    they were written.
//  - all_gather (naive DP/EP): every rank receives every token, runs its experts on all of them
//    and the partial sums are reduce-scattered home.
// Standard or batched format: the batched one packs the received rows into [E_local, T, K]
// batches (T = max_tokens_per_expert >= ranks x max_tokens_per_rank, checked at construction:
// the per-expert counts stay on the device) and reduces each received token's slots from them.
// Both move fixed-size slabs (kernels/ep_dispatch.cu: T = max_tokens_per_rank records and a
// count header per destination), so the exchange sizes are known on the host while the token
// counts stay on the device: no host synchronisation, graph-capturable. The price is that a
// slab travels whole however few of its records are used. Activations are quantized before
// dispatch (fp8 1x128 for the fp8 schemes). A rank passing more than T tokens fails on that rank
// before it communicates (its peers then wait until the communicator's timeout: the GPU path
// does not exchange counts on the host) — unless parallel.capacity_check_all_ranks asks every
// call to all-gather the counts and wait for them, so that every rank fails alike.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "cuda/cuda_util.h"
#include "cuda/kernels/kernels.h"
#include "fusedmoe/error.h"

namespace fusedmoe::cuda {
namespace {

// The token-count check every EP call makes before it communicates. With all_ranks, the ranks'
// counts are all-gathered and waited for (the barrier polls the stream within the communicator's
// timeout), so every rank raises the same error; otherwise only this rank's count is checked.
// `counts` is a device buffer of comm.size() + 1 int64 (all_ranks only).
void check_token_counts(const Communicator& comm, int64_t M, int64_t T, bool all_ranks, const Buffer& counts) {
  if (!all_ranks) {
    FMOE_CHECK(M <= T, "expert-parallel call on rank ", comm.rank(), ": ", M,
               " tokens, over parallel.max_tokens_per_rank=", T);
    return;
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  FMOE_CUDA_CHECK(cudaStreamIsCapturing(stream(), &capture));
  FMOE_CHECK(capture == cudaStreamCaptureStatusNone,
             "parallel.capacity_check_all_ranks waits on the host for every rank's token count, which a CUDA-graph ",
             "capture cannot do; capture with it off");
  const int n = comm.size();
  int64_t* mine = static_cast<int64_t*>(counts.view().data());
  FMOE_CUDA_CHECK(cudaMemcpyAsync(mine, &M, sizeof(M), cudaMemcpyHostToDevice, stream()));
  comm.all_gather(mine, mine + 1, sizeof(int64_t));
  comm.barrier();  // the gather is done (or the communicator timed out and was aborted)
  std::vector<int64_t> c(static_cast<size_t>(n));
  FMOE_CUDA_CHECK(cudaMemcpy(c.data(), mine + 1, n * sizeof(int64_t), cudaMemcpyDeviceToHost));
  for (int r = 0; r < n; ++r)
    FMOE_CHECK(c[r] <= T, "expert-parallel call: rank ", r, " passed ", c[r],
               " tokens, over parallel.max_tokens_per_rank=", T, " (every rank reports this)");
}

Buffer token_count_buffer(const MoEConfig& config, int ranks, Device device) {
  if (!config.parallel.capacity_check_all_ranks) return {};
  DeviceGuard guard(device);
  return Buffer::empty(DType::i64, {ranks + 1}, device);
}

class PrepareFinalizeEp final : public ModularPrepareFinalize {
 public:
  PrepareFinalizeEp(const MoEConfig& config, const Communicator& comm, Device device)
      : config_(config), comm_(comm), device_(device), n_(comm.size()), T_(config.parallel.max_tokens_per_rank),
        all_to_all_(config.parallel.ep_dispatch == EpDispatch::all_to_all),
        batched_(config.activation_format == ActivationFormat::batched) {
    FMOE_CHECK(comm.device() == device, "the CUDA expert-parallel PrepareFinalize needs a communicator on ",
               device.str(), ", got ", comm.name(), " on ", comm.device().str());
    FMOE_CHECK(n_ <= 128, "the CUDA expert-parallel PrepareFinalize handles up to 128 ranks, got ", n_);
    const int64_t K = config.hidden_size;
    rec_ = EpRecord::make(K * int64_t(dtype_size(act_dtype())), scale_cols(), config.routing.top_k);
    counts_ = token_count_buffer(config, n_, device);
    D_ = all_to_all_ ? n_ : 1;
    slab_ = rec_.slab_bytes(T_);
    if (all_to_all_) find_owners();
    if (all_to_all_) open_peer_window();
    if (batched_) {
      FMOE_CHECK(config.max_tokens_per_expert >= n_ * T_, "the CUDA batched format under expert parallelism needs ",
                 "max_tokens_per_expert >= ranks x parallel.max_tokens_per_rank = ", n_, " x ", T_, " = ", n_ * T_,
                 " (any received token can reach any local expert; the counts stay on the device), got ",
                 config.max_tokens_per_expert);
      DeviceGuard guard(device_);
      local_map_ = copy_to(config.parallel.expert_map, device_);
    }
  }

  std::string name() const override {
    if (!all_to_all_) return "cuda.PrepareFinalizeAllGather";
    return peer_.peers ? "cuda.PrepareFinalizeAllToAll.nvlink" : "cuda.PrepareFinalizeAllToAll";
  }
  ActivationFormat activation_format() const override { return config_.activation_format; }
  Device device() const override { return device_; }
  int num_dispatchers() const override { return n_; }
  int64_t max_prepared_tokens(int64_t) const override { return n_ * T_; }

  size_t workspace_bytes(int64_t M) const override {
    const int64_t batch = batched_ ? workspace_tensor_bytes(DType::i32, {n_ * T_, config_.routing.top_k}) +
                                         batched_input_bytes(config_)
                                   : 0;
    const int64_t K = config_.hidden_size, k = config_.routing.top_k, G = std::max<int64_t>(scale_cols(), 1);
    const int64_t R = n_ * T_;
    return expert_input_bytes(config_, M) + batch +                                                     // quantized
           workspace_tensor_bytes(DType::i32, {M, D_}) + workspace_tensor_bytes(DType::i32, {D_}) +       // plan
           workspace_tensor_bytes(DType::u8, {D_ * slab_}) + workspace_tensor_bytes(DType::u8, {n_ * slab_}) +
           workspace_tensor_bytes(act_dtype(), {R, K}) + workspace_tensor_bytes(DType::f32, {R, G}) +
           workspace_tensor_bytes(DType::i32, {R, k}) + workspace_tensor_bytes(DType::f32, {R, k}) +
           (all_to_all_ ? 2 * workspace_tensor_bytes(DType::bf16, {R, K})                    // partial sums, home
                        : workspace_tensor_bytes(DType::f32, {R, K}) + workspace_tensor_bytes(DType::f32, {T_, K}));
  }

  PreparedActivations prepare(const Tensor& hidden, const Tensor& topk_ids, const Tensor& topk_weights,
                              const Tensor& static_input_scale, bool, Workspace& ws) const override {
    DeviceGuard guard(device_);
    const cudaStream_t s = stream();
    const int64_t M = hidden.size(0), K = config_.hidden_size, k = config_.routing.top_k, G = scale_cols();
    check_token_counts(comm_, M, T_, config_.parallel.capacity_check_all_ranks, counts_);
    // Activation rows as they travel (the weights stay home when llama4 applies them first).
    const bool weight_on_input = config_.apply_router_weight_on_input();
    const float* row_weight = weight_on_input ? topk_weights.data_as<const float>() : nullptr;
    const ExpertInput in = make_expert_input(config_, hidden, row_weight, static_input_scale, ws);
    // Plan, pack, exchange, unpack. dispatch: where each token went ([M, D]), then (batched) each
    // received slot's batch row ([R, k]).
    const int64_t R = n_ * T_;
    const Tensor dispatch = ws.take(DType::i32, {M * D_ + (batched_ ? R * k : 0)});
    const Tensor pos(dispatch.data(), DType::i32, {M, D_});
    const Tensor counts = ws.take(DType::i32, {D_});
    launch_ep_plan(topk_ids.data_as<const int32_t>(), M, static_cast<int>(k), static_cast<int>(config_.num_experts),
                   all_to_all_ ? owner_.data_as<const int32_t>() : nullptr, D_, pos.data_as<int32_t>(),
                   counts.data_as<int32_t>(), s);
    // With a peer window the slabs go straight into the ranks' windows: no send or receive buffer.
    const Tensor send = peer_.peers ? Tensor() : ws.take(DType::u8, {D_ * slab_});
    const Tensor recv = peer_.peers ? Tensor() : ws.take(DType::u8, {n_ * slab_});
    launch_ep_pack(rec_, in.rows.data(), G ? in.scales.data_as<const float>() : nullptr,
                   topk_ids.data_as<const int32_t>(), weight_on_input ? nullptr : topk_weights.data_as<const float>(),
                   M, static_cast<int>(k), pos.data_as<const int32_t>(), counts.data_as<const int32_t>(), D_, T_,
                   send.data(), peer_, s);
    EpOwn own_slab;  // all-to-all over NCCL: this rank's own slab stays in the send buffer
    if (peer_.peers) {
      // exchanged by the pack's stores; the unpack waits for each source's signal
    } else if (all_to_all_) {
      const std::vector<size_t> bytes = peer_bytes(slab_);
      const std::vector<size_t> offsets = block_offsets(slab_);
      comm_.all_to_all_v(send.data(), bytes.data(), offsets.data(), recv.data(), bytes.data(), offsets.data());
      own_slab = {send.data_as<uint8_t>() + comm_.rank() * slab_, comm_.rank()};
    } else {
      comm_.all_gather(send.data(), recv.data(), static_cast<size_t>(slab_));
    }
    PreparedActivations p;
    p.format = ActivationFormat::standard;
    p.a1q = ws.take(act_dtype(), {R, K});
    const Tensor scales = ws.take(DType::f32, {R, std::max<int64_t>(G, 1)});
    if (G) p.a1q_scale = Tensor(scales.data(), DType::f32, {R, G});
    p.topk_ids = ws.take(DType::i32, {R, k});
    p.topk_weights = ws.take(DType::f32, {R, k});
    launch_ep_unpack(rec_, recv.data(), own_slab, n_, T_, static_cast<int>(k), p.a1q.data(),
                     scales.data_as<float>(), p.topk_ids.data_as<int32_t>(), p.topk_weights.data_as<float>(), peer_,
                     s);
    p.dispatch = dispatch;
    if (batched_) {
      int32_t* slot_pos = dispatch.data_as<int32_t>() + M * D_;
      const BatchedInput b = make_batched_input(config_, ExpertInput{p.a1q, p.a1q_scale}, p.topk_ids,
                                                local_map_.data_as<const int32_t>(), slot_pos, ws);
      p.format = ActivationFormat::batched;
      p.a1q = b.rows;
      p.a1q_scale = b.scales;
      p.expert_num_tokens = b.counts;
    }
    return p;
  }

  void finalize(const ExpertsOutput& out, const PreparedActivations& prepared, const Tensor& output,
                Workspace& ws) const override {
    const ExpertsOutputKind kind = batched_ ? ExpertsOutputKind::batched : ExpertsOutputKind::sorted;
    FMOE_CHECK(out.kind == kind && out.rows.dtype() == DType::bf16, name(), " finalizes the CUDA experts' ",
               batched_ ? "batched" : "grouped", " bf16 rows only");
    DeviceGuard guard(device_);
    const cudaStream_t s = stream();
    const int64_t K = config_.hidden_size, M = output.size(0), R = n_ * T_;
    // This rank's weighted sums for every received token, then home: bf16 rows over the
    // all-to-all (half the bytes of f32; the home rank adds them in f32), f32 for the
    // reduce-scatter (which sums in transit).
    const DType partial_dtype = all_to_all_ ? DType::bf16 : DType::f32;
    const Tensor partial = ws.take(partial_dtype, {R, K});
    const float* weights =
        config_.apply_router_weight_on_input() ? nullptr : prepared.topk_weights.data_as<const float>();
    const bf16* rows = out.rows.data_as<const bf16>();
    const int32_t* pos = prepared.dispatch.data_as<const int32_t>();
    const int32_t* slot_rows = batched_ ? pos + M * D_ : out.slot_rows.data_as<const int32_t>();
    if (all_to_all_) {
      launch_finalize(rows, slot_rows, weights, R, config_.routing.top_k, K, partial.data_as<bf16>(), s);
      const EpOwn own_block{partial.data_as<bf16>() + comm_.rank() * T_ * K, comm_.rank()};  // never sent
      if (peer_.peers) {  // stored into the other ranks' windows; the combine waits for their signals
        launch_ep_put(rec_, partial.data_as<const bf16>(), T_, K, peer_, s);
        launch_ep_combine(nullptr, own_block, pos, M, D_, T_, K, output.data_as<bf16>(), peer_, s);
        return;
      }
      const Tensor home = ws.take(DType::bf16, {R, K});
      const std::vector<size_t> bytes = peer_bytes(T_ * K * 2);
      const std::vector<size_t> offsets = block_offsets(T_ * K * 2);
      comm_.all_to_all_v(partial.data(), bytes.data(), offsets.data(), home.data(), bytes.data(), offsets.data());
      launch_ep_combine(home.data_as<const bf16>(), own_block, pos, M, D_, T_, K, output.data_as<bf16>(), EpPeer{},
                        s);
    } else {
      launch_finalize_f32(rows, slot_rows, weights, R, config_.routing.top_k, K, partial.data_as<float>(), s);
      const Tensor home = ws.take(DType::f32, {T_, K});
      comm_.reduce_scatter_sum(partial.data_as<const float>(), home.data_as<float>(), static_cast<size_t>(T_ * K));
      launch_ep_combine(home.data_as<const float>(), EpOwn{}, pos, M, D_, T_, K, output.data_as<bf16>(), s);
    }
  }

 private:
  // The fp8 schemes travel as e4m3 with one scale per 1x128 group (expert_input.cpp).
  bool fp8() const { return scheme_quantizes_activations(config_.quant); }
  DType act_dtype() const { return fp8() ? DType::fp8_e4m3 : DType::bf16; }
  int64_t scale_cols() const { return fp8() ? config_.hidden_size / 128 : 0; }

  // An all-to-all's byte counts: `block` to and from every peer, none to itself (a rank's own
  // block never goes through the communicator; the kernels read it where it was written).
  std::vector<size_t> peer_bytes(int64_t block) const {
    std::vector<size_t> b(static_cast<size_t>(n_), static_cast<size_t>(block));
    b[static_cast<size_t>(comm_.rank())] = 0;
    return b;
  }

  std::vector<size_t> block_offsets(int64_t block) const {
    std::vector<size_t> o(static_cast<size_t>(n_));
    for (int p = 0; p < n_; ++p) o[p] = static_cast<size_t>(p * block);
    return o;
  }

  // The all-to-all over a PeerWindow when the communicator offers one (NVLink within one host),
  // unless FUSEDMOE_EP_PEER_WINDOW=0 (then NCCL carries it; every rank must see the same
  // setting). Window layout: see EpPeer (kernels.h).
  void open_peer_window() {
    const char* env = std::getenv("FUSEDMOE_EP_PEER_WINDOW");
    if (env && std::string(env) == "0") return;
    auto up256 = [](int64_t b) { return (b + 255) / 256 * 256; };
    EpPeer w;
    w.dispatch_at = up256(2 * n_ * int64_t(sizeof(uint32_t)));  // after the signal words
    w.dispatch_parity_bytes = up256(n_ * slab_);
    w.combine_at = w.dispatch_at + 2 * w.dispatch_parity_bytes;
    w.combine_parity_bytes = up256(n_ * T_ * config_.hidden_size * 2);
    DeviceGuard guard(device_);
    window_ = comm_.make_peer_window(static_cast<size_t>(w.combine_at + 2 * w.combine_parity_bytes));
    if (!window_) return;
    state_ = Buffer::empty(DType::i32, {4}, device_);
    FMOE_CUDA_CHECK(cudaMemsetAsync(state_.view().data(), 0, state_.nbytes(), stream()));
    FMOE_CUDA_CHECK(cudaStreamSynchronize(stream()));  // zero before any call, whichever stream it is on
    w.peers = window_->peers();
    w.rank = comm_.rank();
    w.ranks = n_;
    w.state = state_.data_as<uint32_t>();
    w.timeout_ns = static_cast<int64_t>(window_->timeout_seconds() * 1e9);
    peer_ = w;
  }

  // Who owns each expert: every rank's expert_map, gathered once at construction (a collective:
  // all ranks build their PrepareFinalize together). Each expert needs exactly one owner.
  void find_owners() {
    DeviceGuard guard(device_);
    const int64_t E = config_.num_experts;
    const Buffer mine = copy_to(config_.parallel.expert_map, device_);
    Buffer all = Buffer::empty(DType::i32, {n_ * E}, device_);
    comm_.all_gather(mine.view().data(), all.view().data(), static_cast<size_t>(E) * sizeof(int32_t));
    comm_.barrier();  // waits for the gather, within the communicator's timeout
    const Buffer maps = copy_to(all.view(), Device::cpu());
    Buffer owner = Buffer::empty(DType::i32, {E});
    int32_t* o = owner.data_as<int32_t>();
    std::fill(o, o + E, -1);
    for (int r = 0; r < n_; ++r)
      for (int64_t e = 0; e < E; ++e)
        if (maps.data_as<const int32_t>()[r * E + e] >= 0) {
          FMOE_CHECK(o[e] < 0, "expert ", e, " is placed on rank ", o[e], " and on rank ", r,
                     "; each expert needs exactly one owner");
          o[e] = r;
        }
    for (int64_t e = 0; e < E; ++e)
      FMOE_CHECK(o[e] >= 0, "expert ", e, " is placed on no rank; each expert needs exactly one owner");
    owner_ = copy_to(owner.view(), device_);
  }

  MoEConfig config_;
  const Communicator& comm_;
  Device device_;
  int n_;
  int64_t T_;
  bool all_to_all_, batched_;
  int D_ = 1;
  EpRecord rec_;
  int64_t slab_ = 0;
  Buffer owner_;
  std::shared_ptr<PeerWindow> window_;  // all-to-all over NVLink stores (null: over NCCL)
  Buffer state_;                        // the window's call and block counters (EpPeer::state)
  EpPeer peer_;
  Buffer local_map_;  // batched: this rank's expert_map (global -> local) on the device
  Buffer counts_;     // device scratch of the all-ranks token-count check
};

// Monolithic experts under expert parallelism (the CPU's AllGatherMonolithic, on the GPU): every
// rank gathers all ranks' hidden rows and router logits (T rows per rank, zero beyond a rank's
// tokens), its monolithic experts route every token and compute their local experts, and the
// bf16 partial outputs are reduce-scattered (in f32) back to the ranks that own the tokens.
class PrepareFinalizeAllGatherMonolithic final : public MonolithicPrepareFinalize {
 public:
  PrepareFinalizeAllGatherMonolithic(const MoEConfig& config, const Communicator& comm, Device device)
      : config_(config), comm_(comm), device_(device), n_(comm.size()), T_(config.parallel.max_tokens_per_rank),
        counts_(token_count_buffer(config, n_, device)) {
    FMOE_CHECK(comm.device() == device, "the CUDA expert-parallel PrepareFinalize needs a communicator on ",
               device.str(), ", got ", comm.name(), " on ", comm.device().str());
  }
  std::string name() const override { return "cuda.PrepareFinalizeAllGatherMonolithic"; }
  ActivationFormat activation_format() const override { return ActivationFormat::standard; }
  Device device() const override { return device_; }
  int num_dispatchers() const override { return n_; }
  int64_t max_prepared_tokens(int64_t) const override { return n_ * T_; }

  size_t workspace_bytes(int64_t) const override {
    const int64_t K = config_.hidden_size, E = config_.num_experts, R = n_ * T_;
    // hidden: send [T, K] + gathered [R, K]; logits (f32 at most): send [T, E] + gathered [R, E];
    // experts' bf16 output [R, K]; its f32 copy [R, K] and this rank's reduced block [T, K].
    return workspace_tensor_bytes(DType::bf16, {T_, K}) + 2 * workspace_tensor_bytes(DType::bf16, {R, K}) +
           workspace_tensor_bytes(DType::f32, {T_, E}) + workspace_tensor_bytes(DType::f32, {R, E}) +
           workspace_tensor_bytes(DType::f32, {R, K}) + workspace_tensor_bytes(DType::f32, {T_, K});
  }

  Prepared prepare(const Tensor& hidden, const Tensor& router_logits, Workspace& ws) const override {
    DeviceGuard guard(device_);
    const int64_t M = hidden.size(0), K = config_.hidden_size, E = config_.num_experts;
    check_token_counts(comm_, M, T_, config_.parallel.capacity_check_all_ranks, counts_);
    const DType logits_dtype = router_logits.dtype();
    return {gather_rows(hidden, DType::bf16, K, ws), gather_rows(router_logits, logits_dtype, E, ws)};
  }

  Tensor experts_output(const Tensor&, int64_t rows, Workspace& ws) const override {
    return ws.take(DType::bf16, {rows, config_.hidden_size});
  }

  void finalize(const Tensor& experts_output, const Tensor& output, Workspace& ws) const override {
    DeviceGuard guard(device_);
    const int64_t K = config_.hidden_size, R = n_ * T_;
    const Tensor partial = ws.take(DType::f32, {R, K});
    launch_bf16_to_f32(experts_output.data_as<const bf16>(), R * K, partial.data_as<float>(), stream());
    const Tensor mine = ws.take(DType::f32, {T_, K});
    comm_.reduce_scatter_sum(partial.data_as<const float>(), mine.data_as<float>(), static_cast<size_t>(T_ * K));
    launch_f32_to_bf16(mine.data_as<const float>(), output.size(0) * K, output.data_as<bf16>(), stream());
  }

 private:
  // This rank's rows padded with zeros to T (a send block), then every rank's blocks: [n*T, cols].
  Tensor gather_rows(const Tensor& src, DType dtype, int64_t cols, Workspace& ws) const {
    const int64_t M = src.size(0);
    const size_t row = static_cast<size_t>(cols) * dtype_size(dtype), used = static_cast<size_t>(M) * row;
    const Tensor send = ws.take(dtype, {T_, cols});
    if (used) FMOE_CUDA_CHECK(cudaMemcpyAsync(send.data(), src.data(), used, cudaMemcpyDeviceToDevice, stream()));
    FMOE_CUDA_CHECK(cudaMemsetAsync(static_cast<uint8_t*>(send.data()) + used, 0, T_ * row - used, stream()));
    const Tensor recv = ws.take(dtype, {n_ * T_, cols});
    comm_.all_gather(send.data(), recv.data(), T_ * row);
    return recv;
  }

  MoEConfig config_;
  const Communicator& comm_;
  Device device_;
  int n_;
  int64_t T_;
  Buffer counts_;  // device scratch of the all-ranks token-count check
};

}  // namespace

std::unique_ptr<PrepareFinalize> make_ep_prepare_finalize(const MoEConfig& config, const Communicator& comm,
                                                          Device device, bool monolithic) {
  if (monolithic) return std::make_unique<PrepareFinalizeAllGatherMonolithic>(config, comm, device);
  return std::make_unique<PrepareFinalizeEp>(config, comm, device);
}

}  // namespace fusedmoe::cuda
