// CPU expert MLP pipeline: rows grouped by expert -> GEMM1 (w13) -> activation ->
// intermediate re-quantization -> GEMM2 (w2). fp32 accumulation. Every output element is
// summed in a fixed order that depends only on K (8-lane partial sums, fixed lane reduction,
// fp8 block scales promoted per 128-wide group), so results are deterministic and
// batch-invariant. Work is split into (expert, 64-row block, 64-column tile) items.
// Where the CPU has AMX, both GEMMs run on its tiles instead (amx_gemm.cpp: another fixed
// order, the same guarantees).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/activation.h"
#include "cpu/amx_gemm.h"
#include "cpu/cpu_backend.h"
#include "cpu/decode_rows.h"
#include "cpu/expert_matrix.h"
#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"
#include "fusedmoe/formats.h"

namespace fusedmoe::cpu {
namespace {

constexpr int64_t kRowBlock = 64;
constexpr int64_t kColTile = 64;

using f32x8 = float __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline float lane_sum(f32x8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

// out[r][j] = sum_{k in [k0,k1)} a[r][k] * w[j][k] for R rows and NW weight rows.
template <int R, int NW>
void dot_tile(const float* const* a, const float* const* w, int64_t k0, int64_t k1, float out[4][2]) {
  f32x8 acc[R][NW];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NW; ++j) acc[r][j] = f32x8{};
  int64_t k = k0;
  for (; k + 8 <= k1; k += 8) {
    f32x8 wv[NW];
    for (int j = 0; j < NW; ++j) wv[j] = load8(w[j] + k);
    for (int r = 0; r < R; ++r) {
      const f32x8 av = load8(a[r] + k);
      for (int j = 0; j < NW; ++j) acc[r][j] += av * wv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NW; ++j) {
      float s = lane_sum(acc[r][j]);
      for (int64_t kk = k; kk < k1; ++kk) s += a[r][kk] * w[j][kk];
      out[r][j] = s;
    }
}

using DotFn = void (*)(const float* const*, const float* const*, int64_t, int64_t, float[4][2]);
constexpr DotFn kDotTable[4][2] = {
    {dot_tile<1, 1>, dot_tile<1, 2>},
    {dot_tile<2, 1>, dot_tile<2, 2>},
    {dot_tile<3, 1>, dot_tile<3, 2>},
    {dot_tile<4, 1>, dot_tile<4, 2>},
};

ExpertMatrix make_matrix(const MoEConfig& c, const Tensor& data, const Tensor& scale, const Tensor& global,
                         const Tensor& bias, int64_t rows, int64_t cols) {
  return {c.quant,
          data.data_as<const uint8_t>(),
          rows,
          cols,
          scheme_is_fp4(c.quant) ? cols / 2 : cols * static_cast<int64_t>(dtype_size(data.dtype())),
          scale.defined() ? scale.data() : nullptr,
          global.defined() ? global.data_as<const float>() : nullptr,
          bias.defined() ? bias.data_as<const float>() : nullptr};
}

struct GemmItem {
  int64_t expert, row_begin, row_end, col_begin, col_end;
};

// out[dst(r)][n] = sum_k A[r][k] * W_e[n][k] (with the scheme's scales) + bias_e[n].
void grouped_gemm(const ExpertMatrix& W, const float* A, const float* A_scales, int64_t a_scale_cols,
                  const int64_t* offsets, int64_t num_experts, float* out, const int64_t* dst_row) {
  std::vector<GemmItem> items;
  for (int64_t e = 0; e < num_experts; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; r += kRowBlock)
      for (int64_t n = 0; n < W.rows; n += kColTile)
        items.push_back({e, r, std::min(r + kRowBlock, offsets[e + 1]), n, std::min(n + kColTile, W.rows)});
  const ScaleMode mode = scale_mode(W.scheme);
  const int64_t K = W.cols, N = W.rows;
  parallel_for(static_cast<int64_t>(items.size()), [&](int64_t index) {
    const GemmItem& it = items[index];
    thread_local std::vector<float> wbuf, groups;
    wbuf.resize(static_cast<size_t>(2 * K));
    groups.resize(static_cast<size_t>(K / 2 + 1));
    for (int64_t n = it.col_begin; n < it.col_end; n += 2) {
      const int nw = static_cast<int>(std::min<int64_t>(2, it.col_end - n));
      const float* w[2] = {wbuf.data(), wbuf.data() + K};
      for (int j = 0; j < nw; ++j) W.decode_row(it.expert, n + j, wbuf.data() + j * K, groups.data());
      for (int64_t r0 = it.row_begin; r0 < it.row_end; r0 += 4) {
        const int nr = static_cast<int>(std::min<int64_t>(4, it.row_end - r0));
        const float* a[4];
        for (int i = 0; i < nr; ++i) a[i] = A + (r0 + i) * K;
        float acc[4][2] = {};
        if (mode == ScaleMode::per_block) {
          const float* wblk[2] = {W.block_scales(it.expert, n), nw > 1 ? W.block_scales(it.expert, n + 1) : nullptr};
          for (int64_t g = 0, k0 = 0; k0 < K; ++g, k0 += kFp8BlockSize) {
            float part[4][2];
            kDotTable[nr - 1][nw - 1](a, w, k0, std::min(K, k0 + kFp8BlockSize), part);
            for (int i = 0; i < nr; ++i)
              for (int j = 0; j < nw; ++j) acc[i][j] += part[i][j] * A_scales[(r0 + i) * a_scale_cols + g] * wblk[j][g];
          }
        } else {
          kDotTable[nr - 1][nw - 1](a, w, 0, K, acc);
          if (mode == ScaleMode::per_row)
            for (int i = 0; i < nr; ++i)
              for (int j = 0; j < nw; ++j) acc[i][j] = acc[i][j] * A_scales[r0 + i] * W.row_scale(it.expert, n + j);
        }
        for (int i = 0; i < nr; ++i) {
          float* dst = out + (dst_row ? dst_row[r0 + i] : r0 + i) * N;
          for (int j = 0; j < nw; ++j) dst[n + j] = W.biased(acc[i][j], it.expert, n + j);
        }
      }
    }
  });
}

}  // namespace

size_t expert_mlp_bytes(const MoEConfig& c, int64_t R) {
  const int64_t K = c.hidden_size, I = c.intermediate_size, N1 = c.w13_rows();
  const int64_t G1 = activation_scale_cols(c.quant, K), G2 = activation_scale_cols(c.quant, I);
  const size_t packed = amx::packed_bytes(R, c.num_local_experts(), std::max(K, I));
  return workspace_tensor_bytes(DType::f32, {R, K}) + workspace_tensor_bytes(DType::f32, {R, G1}) +
         workspace_tensor_bytes(DType::f32, {R, N1}) + workspace_tensor_bytes(DType::f32, {R, I}) +
         workspace_tensor_bytes(DType::f32, {R, G2}) +
         (packed ? workspace_tensor_bytes(DType::u8, {static_cast<int64_t>(packed)}) : 0);
}

void run_expert_mlp(const MoEConfig& c, const ExpertWeights& w, const Tensor& input, const Tensor& input_scales,
                    const RowPlan& plan, float* output, Workspace& workspace) {
  const int64_t K = c.hidden_size, I = c.intermediate_size, N1 = c.w13_rows(), R = plan.num_rows;
  const int64_t G1 = activation_scale_cols(c.quant, K), G2 = activation_scale_cols(c.quant, I);
  const int64_t E = c.num_local_experts();
  float* a1 = workspace.take(DType::f32, {R, K}).data_as<float>();
  float* s1 = workspace.take(DType::f32, {R, G1}).data_as<float>();
  float* h = workspace.take(DType::f32, {R, N1}).data_as<float>();
  float* a2 = workspace.take(DType::f32, {R, I}).data_as<float>();
  float* s2 = workspace.take(DType::f32, {R, G2}).data_as<float>();
  // Scratch of the AMX GEMMs (taken wherever the CPU has them, so the layout does not depend on FUSEDMOE_CPU_AMX).
  const size_t packed_bytes = amx::packed_bytes(R, E, std::max(K, I));
  void* packed = packed_bytes ? workspace.take(DType::u8, {static_cast<int64_t>(packed_bytes)}).data() : nullptr;
  if (R == 0) return;
  const bool amx = amx::enabled();
  const auto gemm = [&](const ExpertMatrix& W, const float* A, const float* A_scales, int64_t a_scale_cols,
                        float* out, const int64_t* dst_row) {
    if (amx) amx::grouped_gemm(W, A, A_scales, a_scale_cols, plan.offsets, E, out, dst_row, packed);
    else grouped_gemm(W, A, A_scales, a_scale_cols, plan.offsets, E, out, dst_row);
  };

  // Gather the rows of each expert, decoded to f32 grid values.
  const bool fp8_input = input.dtype() == DType::fp8_e4m3;
  parallel_for((R + kRowBlock - 1) / kRowBlock, [&](int64_t block) {
    for (int64_t r = block * kRowBlock; r < std::min(R, (block + 1) * kRowBlock); ++r) {
      const int64_t src = plan.src_row[r];
      if (fp8_input) decode_fp8_row(input.data_as<const uint8_t>() + src * K, K, a1 + r * K);
      else decode_bf16_row(input.data_as<const bfloat16>() + src * K, K, a1 + r * K);
      for (int64_t g = 0; g < G1; ++g) s1[r * G1 + g] = input_scales.data_as<const float>()[src * G1 + g];
    }
  });

  const ExpertMatrix w13 = make_matrix(c, w.w13, w.w13_scale, w.w13_global_scale, w.w13_bias, N1, K);
  const ExpertMatrix w2 = make_matrix(c, w.w2, w.w2_scale, w.w2_global_scale, w.w2_bias, K, I);
  gemm(w13, a1, s1, G1, h, nullptr);

  // Activation, then the intermediate stored as the scheme prescribes: fp8 with the
  // activation scales of the scheme, bf16 otherwise.
  const float static_a2 = w.a2_scale.defined() ? *w.a2_scale.data_as<const float>() : 0.0f;
  parallel_for((R + kRowBlock - 1) / kRowBlock, [&](int64_t block) {
    thread_local std::vector<uint8_t> q;
    q.resize(static_cast<size_t>(I));
    for (int64_t r = block * kRowBlock; r < std::min(R, (block + 1) * kRowBlock); ++r) {
      float* act = a2 + r * I;
      float* h_row = h + r * N1;  // GEMM1's output is bf16 (as vLLM's cache1 and the CUDA kernels)
      for (int64_t i = 0; i < N1; ++i) h_row[i] = round_to_bf16(h_row[i]);
      apply_activation(c.activation, h_row, I, act);
      if (scheme_quantizes_activations(c.quant)) {
        quantize_row_fp8(c.quant, act, I, static_a2, q.data(), s2 + r * G2);
        decode_fp8_row(q.data(), I, act);
      } else {
        for (int64_t i = 0; i < I; ++i) act[i] = round_to_bf16(act[i]);
      }
    }
  });

  gemm(w2, a2, s2, G2, output, plan.dst_row);
}

size_t row_plan_bytes(const MoEConfig& c, int64_t max_rows) {
  return workspace_tensor_bytes(DType::i64, {c.num_local_experts() + 1}) +
         2 * workspace_tensor_bytes(DType::i64, {max_rows});
}

RowPlan plan_rows_by_expert(const MoEConfig& c, const Tensor& topk_ids, Workspace& workspace) {
  const int64_t M = topk_ids.size(0), k = topk_ids.size(1), E = c.num_local_experts();
  int64_t* offsets = workspace.take(DType::i64, {E + 1}).data_as<int64_t>();
  int64_t* src = workspace.take(DType::i64, {M * k}).data_as<int64_t>();
  int64_t* dst = workspace.take(DType::i64, {M * k}).data_as<int64_t>();
  const int32_t* ids = topk_ids.data_as<const int32_t>();
  const int32_t* map = c.parallel.expert_map.defined() ? c.parallel.expert_map.data_as<const int32_t>() : nullptr;
  std::fill(offsets, offsets + E + 1, 0);
  for (int64_t i = 0; i < M * k; ++i) {
    const int32_t e = local_expert_of(ids[i], c.num_experts, map);
    if (e >= 0) ++offsets[e + 1];
  }
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  std::vector<int64_t> next(offsets, offsets + E);
  for (int64_t i = 0; i < M * k; ++i) {
    const int32_t e = local_expert_of(ids[i], c.num_experts, map);
    if (e < 0) continue;
    const int64_t r = next[e]++;
    src[r] = i / k;  // the token's input row
    dst[r] = i;      // its (token, slot) output row
  }
  return {offsets, src, dst, offsets[E]};
}

}  // namespace fusedmoe::cpu
