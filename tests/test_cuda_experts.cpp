// The CUDA modular experts end to end against the float64 reference, on both paths (small-M
// streaming kernel, CUTLASS grouped GEMM): every scheme (bf16, fp8-tensor, fp8-channel, fp8-block,
// nvfp4, mxfp4) x activation, expert biases, every routing method through forward(), the edge cases of
// the CPU suite, real model shapes (gpt-oss-120b's mxfp4 layer included), the > 2^31 element
// case, run-twice determinism, CUDA-graph replay, the bf16 fused decode kernel against the small-M chain and bad
// input. Skips without a GPU.
#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <tuple>

#include "cuda_test_util.h"
#include "cuda/kernels/kernels.h"

namespace fusedmoe::test {
namespace {

using SchemeActPath = std::tuple<QuantScheme, ActivationKind, bool>;
class CudaSchemeByActivation : public ::testing::TestWithParam<SchemeActPath> {};

TEST_P(CudaSchemeByActivation, MatchesFloat64Reference) {
  FMOE_REQUIRE_GPU();
  const auto [scheme, act, small_m] = GetParam();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(scheme, /*E=*/10, /*K=*/256, /*I=*/384, /*top_k=*/3);
  c.activation.kind = act;
  c.routing.method = RoutingMethod::precomputed;  // random ids with duplicates
  for (int64_t M : {1, 7, 37, 130}) {
    const Problem p = make_problem(c, M, seed + M);
    for (int gemm_tile_m : {128, 64}) {  // the grouped path's two CUTLASS variants
      if (small_m && gemm_tile_m == 64) continue;
      SCOPED_TRACE("M " + std::to_string(M) + (small_m ? "" : " gemm tile " + std::to_string(gemm_tile_m)));
      const ForcePath force(small_m, 16, 0, false, false, gemm_tile_m);
      const Buffer out = run_cuda_apply(to_gpu(p), M);
      expect_matches_reference(p, out, p.ids, p.topk_weights);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Supported, CudaSchemeByActivation,
    ::testing::Combine(::testing::ValuesIn(kCudaSchemes),
                       ::testing::Values(ActivationKind::silu_mul, ActivationKind::gelu_mul,
                                         ActivationKind::gelu_tanh_mul, ActivationKind::swiglu_oai,
                                         ActivationKind::relu2),
                       ::testing::Bool()),
    [](const auto& info) {
      std::string name = std::string(quant_scheme_name(std::get<0>(info.param))) + "_" +
                         activation_name(std::get<1>(info.param)) + (std::get<2>(info.param) ? "_smallm" : "_grouped");
      for (char& ch : name)
        if (ch == '-') ch = '_';
      return name;
    });

// The path heuristic (host code: runs without a GPU too). Decode sizes take the small-M kernel,
// fp4 weights up to 32 rows per expert (their grouped path first dequantizes every expert), and
// the small-M kernel gives each warp its own tile from 16 routed rows on (bf16: from 16-row tiles), and
// the fp4 dequantization chunk is whole experts within 256 MiB, at least one, at most all.
// FUSEDMOE_FP4_DEQUANT_MIB sets the fp4 chunk budget; a value that is not a whole number of MiB in
// [1, 16384] is a clear error.
TEST(CudaHeuristics, Fp4DequantBudgetFromTheEnvironment) {
  const int64_t mib = int64_t(1) << 20;
  for (const char* bad : {"abc", "0", "512MiB", "-3", "20000"}) {
    const ScopedEnv env("FUSEDMOE_FP4_DEQUANT_MIB", bad);
    EXPECT_THROW(cuda::choose_fp4_chunk_experts(33 * mib, 128), Error) << bad;
  }
  {
    const ScopedEnv env("FUSEDMOE_FP4_DEQUANT_MIB", "512");
    EXPECT_EQ(cuda::choose_fp4_chunk_experts(33 * mib, 128), 15);  // 512 MiB / 33 MiB
  }
  EXPECT_EQ(cuda::choose_fp4_chunk_experts(33 * mib, 128), 31);  // the default, 1 GiB
}

TEST(CudaHeuristics, FusedDecodeModeFromTheEnvironment) {
  using cuda::FusedDecodeMode;
  for (const char* bad : {"2", "on", "10", "01"}) {
    const ScopedEnv env("FUSEDMOE_FUSED_DECODE", bad);
    EXPECT_THROW(cuda::fused_decode_mode_from_env(), Error) << bad;
  }
  for (auto [text, mode] : {std::pair{"1", FusedDecodeMode::on}, std::pair{"0", FusedDecodeMode::off},
                            std::pair{"", FusedDecodeMode::automatic}}) {
    const ScopedEnv env("FUSEDMOE_FUSED_DECODE", text);
    EXPECT_EQ(cuda::fused_decode_mode_from_env(), mode) << text;
  }
}

// The switch FUSEDMOE_FP4_PERSISTENT (and the other 0/1 switches) is read through: bad values name the variable.
TEST(CudaHeuristics, OnOffSwitchFromTheEnvironment) {
  for (const char* bad : {"2", "on", "10", "01"}) {
    const ScopedEnv env("FUSEDMOE_FP4_PERSISTENT", bad);
    try {
      (void)cuda::env_switch("FUSEDMOE_FP4_PERSISTENT");
      ADD_FAILURE() << "no error for " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("FUSEDMOE_FP4_PERSISTENT"), std::string::npos) << e.what();
    }
  }
  for (auto [text, value] : {std::pair{"1", std::optional<bool>(true)}, std::pair{"0", std::optional<bool>(false)},
                             std::pair{"", std::optional<bool>()}}) {
    const ScopedEnv env("FUSEDMOE_FP4_PERSISTENT", text);
    EXPECT_EQ(cuda::env_switch("FUSEDMOE_FP4_PERSISTENT"), value) << text;
  }
}

TEST(CudaHeuristics, PathTileAndFp4Chunk) {
  using cuda::choose_experts_path;
  const QuantScheme nv = QuantScheme::nvfp4, fp8 = QuantScheme::fp8_block;
  EXPECT_TRUE(choose_experts_path(1, 8, 128).small_m);
  EXPECT_EQ(choose_experts_path(1, 8, 128).tile_tokens, 8);
  // GEMM2's fp4 split-k blocks start in GEMM1's tail at 1 token only, and only for fp4 weights.
  EXPECT_TRUE(choose_experts_path(1, 8, 128, nv).fp4_gemm2_overlap);
  EXPECT_TRUE(choose_experts_path(1, 4, 128, QuantScheme::mxfp4).fp4_gemm2_overlap);
  EXPECT_FALSE(choose_experts_path(2, 4, 128, QuantScheme::mxfp4).fp4_gemm2_overlap);
  EXPECT_FALSE(choose_experts_path(1, 8, 128).fp4_gemm2_overlap);
  // fp4 split-k blocks of 8 warps at 1-2 tokens on rows of more than 2048 values (per GEMM: GEMM1's K is hidden_size,
  // GEMM2's intermediate_size), 4 otherwise.
  const auto fp4_shape = [&](int64_t tokens, int k, QuantScheme q, int64_t H, int64_t I) {
    return choose_experts_path(tokens, k, 128, q, I, false, H, 2 * I);
  };
  const QuantScheme mx = QuantScheme::mxfp4;
  EXPECT_EQ(fp4_shape(1, 4, mx, 2880, 2880).fp4_split_k_warps1, 8);  // gpt-oss-120b
  EXPECT_EQ(fp4_shape(2, 4, mx, 2880, 2880).fp4_split_k_warps2, 8);
  EXPECT_EQ(fp4_shape(3, 4, mx, 2880, 2880).fp4_split_k_warps1, 4);
  EXPECT_EQ(fp4_shape(3, 4, mx, 2880, 2880).fp4_split_k_warps2, 4);
  EXPECT_EQ(fp4_shape(1, 8, nv, 2048, 768).fp4_split_k_warps1, 4);  // qwen3-30b-a3b-nvfp4: 16 and 6 chunks a row
  EXPECT_EQ(fp4_shape(1, 8, nv, 2048, 768).fp4_split_k_warps2, 4);
  EXPECT_EQ(fp4_shape(1, 8, nv, 4096, 1536).fp4_split_k_warps1, 8);
  EXPECT_EQ(fp4_shape(1, 8, nv, 4096, 1536).fp4_split_k_warps2, 4);
  EXPECT_EQ(choose_experts_path(1, 4, 128, QuantScheme::bf16, 2880, false, 2880, 5760).fp4_split_k_warps1, 4);
  EXPECT_EQ(choose_experts_path(160, 8, 128).tile_tokens, 16);      // 10 rows per expert
  EXPECT_EQ(choose_experts_path(192, 8, 128).tile_tokens, 16);      // 12 rows, the layer's shape unknown: small-M
  EXPECT_EQ(choose_experts_path(194, 8, 128).tile_tokens, 256);     // 12.1 rows: the bf16 wgmma kernel
  EXPECT_EQ(choose_experts_path(384, 8, 128).tile_tokens, 256);     // 24 rows
  EXPECT_EQ(choose_experts_path(1024, 2, 8).tile_tokens, 256);      // mixtral at 1024: 256 rows
  EXPECT_FALSE(choose_experts_path(512, 2, 8).wgmma_pairs);         // 128 rows: blocks alone
  EXPECT_TRUE(choose_experts_path(520, 2, 8).wgmma_pairs);          // 130 rows: in pairs
  EXPECT_TRUE(choose_experts_path(2048, 2, 8).small_m);             // 512 rows: still the wgmma kernel
  EXPECT_FALSE(choose_experts_path(2056, 2, 8).small_m);            // 514 rows: CUTLASS
  // Narrow layers (hidden_size <= 2048) keep the bf16 wgmma kernel up to 2048 rows per expert.
  const auto bf16_shape = [&](int64_t tokens, int k, int64_t E, int64_t H, int64_t I) {
    return choose_experts_path(tokens, k, E, QuantScheme::bf16, I, false, H, 2 * I);
  };
  EXPECT_TRUE(bf16_shape(32768, 8, 128, 2048, 768).small_m);   // qwen3-30b-a3b: 2048 rows
  EXPECT_TRUE(bf16_shape(32768, 8, 128, 2048, 768).wgmma_pairs);
  EXPECT_FALSE(bf16_shape(32784, 8, 128, 2048, 768).small_m);  // 2049 rows: CUTLASS
  EXPECT_FALSE(bf16_shape(4096, 2, 8, 4096, 14336).small_m);   // mixtral-8x7b: 1024 rows, CUTLASS
  EXPECT_TRUE(bf16_shape(2048, 2, 8, 4096, 14336).small_m);    // 512 rows
  EXPECT_TRUE(choose_experts_path(256, 8, 128, nv).small_m);
  EXPECT_EQ(choose_experts_path(128, 8, 128, nv).tile_tokens, 16);   // 8 rows: the small-M kernel
  EXPECT_EQ(choose_experts_path(130, 8, 128, nv).tile_tokens, 256);  // 8.1 rows: the fp4 wgmma kernel
  EXPECT_EQ(choose_experts_path(384, 8, 128, nv).tile_tokens, 256);  // 24 rows
  EXPECT_TRUE(choose_experts_path(1024, 4, 128, nv).small_m);     // gpt-oss at 1024: 32 rows
  EXPECT_EQ(choose_experts_path(1024, 4, 128, nv).tile_tokens, 256);
  EXPECT_TRUE(choose_experts_path(1024, 8, 128, nv).small_m);     // qwen3 at 1024: 64 rows, the fp4 wgmma kernel
  EXPECT_EQ(choose_experts_path(1024, 8, 128, nv).tile_tokens, 256);
  EXPECT_FALSE(choose_experts_path(2048, 8, 128, nv).fp4_persistent);  // 128 rows: a block per unit
  EXPECT_TRUE(choose_experts_path(2056, 8, 128, nv).fp4_persistent);   // 128.5 rows: persistent blocks
  EXPECT_FALSE(choose_experts_path(8192, 8, 128).fp4_persistent);      // bf16 weights
  EXPECT_EQ(choose_experts_path(8192, 4, 128, QuantScheme::mxfp4).tile_tokens, 256);  // gpt-oss at 8192
  EXPECT_TRUE(choose_experts_path(8192, 8, 128, nv).small_m);     // never the dequantizing CUTLASS path
  EXPECT_FALSE(choose_experts_path(1, 8, 128, nv).warp_tiles);   // 8 routed rows: split-k blocks
  EXPECT_TRUE(choose_experts_path(2, 8, 128, nv).warp_tiles);    // 16: a tile per warp
  EXPECT_FALSE(choose_experts_path(2, 4, 128, QuantScheme::mxfp4).warp_tiles);  // gpt-oss-120b at 2 tokens: 8 rows
  EXPECT_TRUE(choose_experts_path(3, 4, 128, QuantScheme::mxfp4).warp_tiles);   // 12: fp4 warp tiles
  EXPECT_FALSE(choose_experts_path(3, 4, 128, fp8).warp_tiles);                 // 12, fp8: split-k blocks
  EXPECT_FALSE(choose_experts_path(1, 8, 256, fp8).warp_tiles);  // deepseek-v3 at 1 token
  EXPECT_TRUE(choose_experts_path(2, 8, 256, fp8).warp_tiles);
  EXPECT_EQ(choose_experts_path(2, 8, 256, fp8).tile_tokens, 32);  // fp8 warp tiles: up to 32 rows a pass
  EXPECT_EQ(choose_experts_path(1, 8, 256, fp8).tile_tokens, 8);
  EXPECT_FALSE(choose_experts_path(2, 8, 128).warp_tiles);       // bf16, 8-row tiles: split-k blocks
  EXPECT_TRUE(choose_experts_path(160, 8, 128).warp_tiles);      // bf16, 16-row tiles: a tile per warp
  EXPECT_EQ(choose_experts_path(192, 8, 128, fp8).tile_tokens, 32);   // 12 rows: small-M warp tiles
  EXPECT_EQ(choose_experts_path(256, 8, 128, fp8).tile_tokens, 128);  // 16 rows: the fp8 wgmma kernel
  EXPECT_EQ(choose_experts_path(1024, 8, 128).gemm_tile_m, 64);       // qwen3 at 1024: 64 rows per expert
  EXPECT_EQ(choose_experts_path(1024, 8, 256, fp8).tile_tokens, 128);  // deepseek-v3 at 1024: 32 rows
  EXPECT_TRUE(choose_experts_path(2048, 8, 256, fp8).small_m);        // 64 rows: still the fp8 wgmma kernel
  EXPECT_FALSE(choose_experts_path(2056, 8, 256, fp8).small_m);       // 64.25: CUTLASS, 128-row tiles
  EXPECT_EQ(choose_experts_path(2056, 8, 256, fp8).gemm_tile_m, 128);
  EXPECT_EQ(choose_experts_path(4096, 8, 256).gemm_tile_m, 64);       // bf16 at 128 rows per expert
  // Decode batches (up to 12 rows per expert) on the wgmma kernels where their expected active experts hold 500 MB
  // of weights (bf16: 700 MB) and give each GEMM 132 units of 128 weight rows; the layer's shape unknown: small-M.
  const auto decode = [&](int64_t tokens, int k, int64_t E, QuantScheme q, int64_t H, int64_t I, int64_t N1) {
    return choose_experts_path(tokens, k, E, q, I, false, H, N1);
  };
  EXPECT_EQ(decode(9, 8, 128, QuantScheme::bf16, 2048, 768, 1536).tile_tokens, 8);    // qwen3-30b-a3b: 528 MB
  EXPECT_EQ(decode(10, 8, 128, QuantScheme::bf16, 2048, 768, 1536).tile_tokens, 256);  // 574 MB, rows in place
  EXPECT_EQ(decode(17, 8, 128, QuantScheme::bf16, 2048, 768, 1536).tile_tokens, 256);  // 794 MB, gathered
  EXPECT_EQ(decode(14, 8, 128, QuantScheme::bf16, 2048, 768, 1536).tile_tokens, 256);  // 731 MB
  EXPECT_TRUE(decode(14, 8, 128, QuantScheme::bf16, 2048, 768, 1536).small_m);
  EXPECT_EQ(decode(14, 8, 128, QuantScheme::bf16, 0, 768, 1536).tile_tokens, 8);       // shape unknown
  EXPECT_EQ(decode(24, 8, 128, QuantScheme::fp8_per_tensor, 2048, 768, 1536).tile_tokens, 32);  // fp8: 476 MB
  EXPECT_EQ(decode(32, 8, 128, QuantScheme::fp8_per_tensor, 2048, 768, 1536).tile_tokens, 128);  // 527 MB
  EXPECT_EQ(decode(1, 8, 256, fp8, 7168, 2048, 4096).tile_tokens, 128);              // deepseek-v3: 352 MB, in place
  EXPECT_EQ(decode(12, 8, 128, QuantScheme::fp8_per_tensor, 2048, 768, 1536).tile_tokens, 32);   // 341 MB
  EXPECT_EQ(decode(16, 8, 128, QuantScheme::fp8_per_tensor, 2048, 768, 1536).tile_tokens, 128);  // 389 MB
  EXPECT_EQ(decode(2, 8, 256, fp8, 7168, 2048, 4096).tile_tokens, 128);              // 694 MB
  EXPECT_EQ(decode(256, 8, 256, fp8, 7168, 2048, 4096).tile_tokens, 128);            // 8 rows per expert
  // GEMM1 reads its rows where they lie on the wgmma kernels up to kWgmmaInPlaceMaxTokens tokens.
  EXPECT_TRUE(decode(4, 8, 256, fp8, 7168, 2048, 4096).x_in_place);                  // deepseek-v3 at 4 tokens
  EXPECT_TRUE(decode(16, 8, 128, QuantScheme::bf16, 2048, 768, 1536).x_in_place);    // qwen3-30b-a3b at 16
  EXPECT_FALSE(decode(17, 8, 128, QuantScheme::bf16, 2048, 768, 1536).x_in_place);
  EXPECT_FALSE(decode(9, 8, 128, QuantScheme::bf16, 2048, 768, 1536).x_in_place);    // small-M: gathers as it loads
  EXPECT_TRUE(decode(1, 8, 256, fp8, 7168, 2048, 4096).x_in_place);
  EXPECT_FALSE(decode(128, 8, 256, fp8, 7168, 2048, 4096).x_in_place);
  EXPECT_EQ(decode(2, 2, 8, QuantScheme::fp8_per_tensor, 4096, 14336, 28672).tile_tokens, 8);  // 112 GEMM2 units
  EXPECT_EQ(decode(4, 2, 8, QuantScheme::fp8_per_tensor, 4096, 14336, 28672).tile_tokens, 128);  // 175
  EXPECT_EQ(decode(32, 2, 8, QuantScheme::bf16, 4096, 14336, 28672).tile_tokens, 256);  // mixtral-8x7b
  EXPECT_EQ(decode(64, 4, 128, QuantScheme::mxfp4, 2880, 2880, 5760).tile_tokens, 8);  // fp4: never at decode
  // fp8-tensor and fp8-channel: 64-row tiles up to 128 rows per expert on the promoting GEMMs, up to 512 on the
  // FP8FastAccum ones (the last argument)
  const QuantScheme fp8_tensor = QuantScheme::fp8_per_tensor, fc = QuantScheme::fp8_per_channel;
  EXPECT_EQ(choose_experts_path(256, 2, 8, fp8_tensor).tile_tokens, 128);           // 64 rows: the fp8 wgmma kernel
  EXPECT_EQ(choose_experts_path(256, 2, 8, fp8_tensor, 0, true).tile_tokens, 128);  // FastAccum or not
  EXPECT_FALSE(choose_experts_path(260, 2, 8, fp8_tensor).small_m);                 // 65 rows: CUTLASS
  EXPECT_EQ(choose_experts_path(256, 2, 8, fc).tile_tokens, 128);                   // fp8-channel too
  EXPECT_EQ(choose_experts_path(512, 2, 8, fp8_tensor).gemm_tile_m, 64);            // mixtral-8x7b-fp8: 128 rows
  EXPECT_EQ(choose_experts_path(520, 2, 8, fp8_tensor).gemm_tile_m, 128);           // 130 rows
  EXPECT_EQ(choose_experts_path(2048, 2, 8, fp8_tensor, 0, true).gemm_tile_m, 64);  // FastAccum, 512 rows
  EXPECT_EQ(choose_experts_path(4096, 2, 8, fp8_tensor, 0, true).gemm_tile_m, 128);  // 1024 rows
  EXPECT_EQ(choose_experts_path(8192, 8, 128, fc).gemm_tile_m, 128);                // 512 rows
  EXPECT_EQ(choose_experts_path(8192, 8, 128, fc, 0, true).gemm_tile_m, 64);
  // fp8-channel's GEMM2 over a short K: 128-row tiles above 128 rows per expert (FastAccum: GEMM1's 64)
  EXPECT_EQ(choose_experts_path(8192, 8, 128, fc, 0, true).gemm2_tile_m, 64);     // K unknown: GEMM1's tile
  EXPECT_EQ(choose_experts_path(8192, 8, 128, fc, 768, true).gemm_tile_m, 64);    // qwen3-fp8-channel at 8192
  EXPECT_EQ(choose_experts_path(8192, 8, 128, fc, 768, true).gemm2_tile_m, 128);
  EXPECT_EQ(choose_experts_path(2048, 8, 128, fc, 768, true).gemm2_tile_m, 64);   // 128 rows per expert
  EXPECT_EQ(choose_experts_path(2080, 8, 128, fc, 768, true).gemm2_tile_m, 128);  // 130
  EXPECT_EQ(choose_experts_path(2048, 2, 8, fc, 14336, true).gemm2_tile_m, 64);   // mixtral shapes: long K
  EXPECT_EQ(choose_experts_path(8192, 8, 128, fp8_tensor, 768, true).gemm2_tile_m, 64);  // fp8-tensor: GEMM1's tile
  EXPECT_EQ(choose_experts_path(8192, 8, 128, QuantScheme::bf16, 768).gemm2_tile_m, 128);  // bf16: GEMM1's (128)
  EXPECT_EQ(choose_experts_path(512, 2, 8).gemm_tile_m, 64);       // mixtral at 512: 128 rows per expert
  EXPECT_EQ(choose_experts_path(1024, 2, 8).gemm_tile_m, 128);      // 256 rows per expert
  EXPECT_EQ(choose_experts_path(8192, 8, 128).gemm_tile_m, 128);   // 512 rows per expert
  using cuda::FusedDecodeMode;
  const int64_t mixtral = int64_t(3) * 14336 * 4096 * 2, qwen3 = int64_t(3) * 768 * 2048 * 2;
  EXPECT_FALSE(cuda::choose_fused_decode(1, 8, 128, qwen3, FusedDecodeMode::automatic));  // short weight rows
  EXPECT_TRUE(cuda::choose_fused_decode(1, 8, 128, qwen3, FusedDecodeMode::on));
  EXPECT_TRUE(cuda::choose_fused_decode(1, 2, 8, mixtral, FusedDecodeMode::automatic));  // long ones
  EXPECT_FALSE(cuda::choose_fused_decode(1, 2, 8, mixtral, FusedDecodeMode::off));
  EXPECT_TRUE(cuda::choose_fused_decode(8, 2, 8, mixtral, FusedDecodeMode::automatic));   // 2 rows per expert
  EXPECT_TRUE(cuda::choose_fused_decode(16, 2, 8, mixtral, FusedDecodeMode::automatic));  // 4 rows: split-k blocks
  EXPECT_FALSE(cuda::choose_fused_decode(24, 1, 16, mixtral, FusedDecodeMode::on));  // above its range (16 tokens)
  EXPECT_FALSE(cuda::choose_fused_decode(8, 8, 4, mixtral, FusedDecodeMode::on));   // 16 rows per expert: grouped
  EXPECT_FALSE(cuda::choose_fused_decode(8, 8, 8, mixtral, FusedDecodeMode::on));   // 8 rows: modular warp tiles
  // where the bf16 wgmma kernels stream the batch (wgmma_streams_decode), from 9 tokens on
  EXPECT_TRUE(cuda::choose_fused_decode(8, 2, 8, mixtral, FusedDecodeMode::automatic, true));
  EXPECT_FALSE(cuda::choose_fused_decode(12, 2, 8, mixtral, FusedDecodeMode::automatic, true));
  EXPECT_TRUE(cuda::choose_fused_decode(12, 2, 8, mixtral, FusedDecodeMode::automatic, false));
  EXPECT_TRUE(cuda::choose_fused_decode(12, 2, 8, mixtral, FusedDecodeMode::on, true));
  EXPECT_TRUE(cuda::choose_route_plan_kernel(1, 8, 256, 256));     // deepseek-v3 at 1 token: one launch
  EXPECT_TRUE(cuda::choose_route_plan_kernel(8, 8, 128, 128));     // qwen3 at 8: a warp per token
  EXPECT_FALSE(cuda::choose_route_plan_kernel(9, 8, 128, 128));    // 9 tokens: the router and plan kernels
  EXPECT_FALSE(cuda::choose_route_plan_kernel(1, 8, 300, 300));    // more experts than route+plan takes
  EXPECT_FALSE(cuda::choose_route_plan_kernel(1, 4, 512, 256));    // more local experts than 256 threads
  const int64_t mib = int64_t(1) << 20;
  EXPECT_EQ(cuda::choose_fp4_chunk_experts(33 * mib, 128), 31);     // gpt-oss-120b's w13: 1 GiB / 33 MiB
  EXPECT_EQ(cuda::choose_fp4_chunk_experts(6 * mib, 128), 128);     // qwen3-nvfp4's w13: every expert
  EXPECT_EQ(cuda::choose_fp4_chunk_experts(1500 * mib, 8), 1);      // bigger than the budget
  EXPECT_EQ(cuda::choose_fp4_chunk_experts(1 * mib, 10), 10);       // all of them
  {
    const ForcePath force(false, 16, 3);
    EXPECT_EQ(cuda::choose_fp4_chunk_experts(1 * mib, 10), 3);
    EXPECT_FALSE(choose_experts_path(1, 8, 128, nv).small_m);
  }
  EXPECT_EQ(cuda::choose_fp4_chunk_experts(1 * mib, 10), 10);
}

// forward(): routing on the GPU, then the experts; compared with the reference on the ids the
// GPU picked (the router itself is compared with the CPU's in test_cuda_router).
Buffer run_cuda_forward(const GpuProblem& g, int64_t M, Buffer* ids_out, Buffer* weights_out) {
  const FusedMoEKernel kernel = cuda_kernel(g);
  Buffer out = poisoned_bf16_on_gpu(M, g.config.hidden_size);
  const Buffer ws = poisoned_workspace(kernel, M);  // NaN bits: a read of a workspace byte no stage wrote shows
  kernel.forward(g.hidden, g.logits, out, ws.view());
  const int64_t k = g.config.routing.top_k;
  Buffer ids = Buffer::empty(DType::i32, {M, k}, kGpu), w = Buffer::empty(DType::f32, {M, k}, kGpu);
  route(g.config.routing, g.logits, ids, w);
  *ids_out = copy_to(ids, Device::cpu());
  *weights_out = copy_to(w, Device::cpu());
  return copy_to(out, Device::cpu());
}

TEST(CudaExperts, ForwardWithEveryRoutingMethod) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  // forward's fp8 quantizers run beside the router (launch_quantize_fp8_block's beside_previous); fp8-channel has
  // its own (per-row) quantizer.
  for (QuantScheme s : {QuantScheme::bf16, QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel,
                        QuantScheme::fp8_block})
    for (RoutingMethod m : kGpuRoutingMethods) {
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + " " + routing_method_name(m));
      const int64_t M = 45;
      const Problem p = make_problem(routed_config(s, m), M, seed);
      Buffer ids, w;
      const Buffer out = run_cuda_forward(to_gpu(p), M, &ids, &w);
      expect_matches_reference(p, out, ids, w);
    }
}

// The quantizer reads hidden beside the router, before its pdl_wait: hidden must still be what the kernel before
// the router wrote. Each forward takes the previous one's output as hidden and logits, back to back.
TEST(CudaExperts, BackToBackForwardsReadThePreviousOutput) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel, QuantScheme::fp8_block}) {
    SCOPED_TRACE(quant_scheme_name(s));
    MoEConfig c = small_config(s, 128, 128, 128, 4);
    c.routing.method = RoutingMethod::deepseek_v3;
    c.routing.num_expert_group = 8;
    c.routing.topk_group = 2;
    const GpuProblem g = to_gpu(make_problem(c, 3, seed));
    expect_chained_forwards_equal_synchronized(cuda_kernel(g), g.hidden);
  }
}

TEST(CudaExperts, ZeroTokensIsANoOp) {
  FMOE_REQUIRE_GPU();
  const Problem p = make_problem(small_config(QuantScheme::bf16), 0, 1);
  const GpuProblem g = to_gpu(p);
  const FusedMoEKernel kernel = cuda_kernel(g);
  Buffer out = Buffer::empty(DType::bf16, {0, 256}, kGpu);
  kernel.apply(g.hidden, g.ids, g.topk_weights, out);
  kernel.forward(g.hidden, g.logits, out);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// M = 0 inside CUDA-graph capture (bug catalogue B.2 #1): neither the modular nor the monolithic forward
// records anything that breaks the capture (a host synchronisation, a launch of an empty grid), for every
// scheme, and the graph replays.
TEST(CudaExperts, ZeroTokensInsideGraphCapture) {
  FMOE_REQUIRE_GPU();
  for (QuantScheme s : {QuantScheme::bf16, QuantScheme::fp8_block, QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (bool monolithic : {false, true}) {
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + (monolithic ? " monolithic" : " modular"));
      const Problem p = make_problem(small_config(s), 0, 1);
      const GpuProblem g = to_gpu(p);
      KernelOptions opt;
      opt.backend = Backend::cuda;
      opt.use_monolithic = monolithic;
      const FusedMoEKernel kernel = make_kernel(g.config, g.weights.weights, opt);
      const Buffer ws = Buffer::bytes(std::max<size_t>(kernel.workspace_bytes(0), 1), kGpu);
      Buffer out = Buffer::empty(DType::bf16, {0, p.config.hidden_size}, kGpu);
      CapturedGraph graph([&] {
        kernel.forward(g.hidden, g.logits, out, ws.view());
        if (!monolithic) kernel.apply(g.hidden, g.ids, g.topk_weights, out, ws.view());
      });
      graph.replay();
      graph.replay();
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
}

// Every compiled variant (small-M with 8-, 16- and 32-row tiles, 64 for fp4 warp tiles; the grouped
// GEMM), one test each so that a sanitizer report names the variant; fp4 on the grouped path is dequantized 3
// experts at a time (chunks 3, 3, 3, 1 of 10 experts).
class CudaExpertsVariant : public ::testing::TestWithParam<int> {};

TEST_P(CudaExpertsVariant, SkewMaskedIdsTopKEqualsEAndOddExpertCounts) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  // 8/16/32: small-M tile; -8/-16/-32 (-64, fp4 only): the same with a tile per warp; -256 (fp4, bf16) and -128
  // (fp8): the wgmma kernels; -1256 and -1128: those with GEMM1's rows read in place (bf16 and fp8; blocks alone);
  // 0 / 64: grouped, 128- / 64-row GEMM tiles
  // (the bf16 wgmma GEMM1 applies the activation itself by default); -2128 / -3128: the bf16 wgmma GEMM1 without the
  // activation (FUSEDMOE_WGMMA_GATE_UP=0, GEMM1 then the activation kernel), rows in place / gathered in pairs
  const bool chain = GetParam() == -2128 || GetParam() == -3128;
  const bool in_place = GetParam() <= -1000 && GetParam() != -3128;
  const int param = chain ? -256 : in_place ? GetParam() + 1000 : GetParam();
  const int tile = param < 0 ? -param : param;
  {
    const ScopedEnv act_epilogue("FUSEDMOE_WGMMA_GATE_UP", chain ? "0" : "1");
    const bool small_m = param < 0 || (tile > 0 && tile <= 32);
    const ForcePath force(small_m, small_m ? tile : 16, /*fp4_chunk_experts=*/3, /*warp_tiles=*/param < 0, false,
                          param == 64 ? 64 : 128, /*wgmma_pairs=*/!in_place, false, false, in_place);
    for (QuantScheme s : kCudaSchemes) {
      // fp4 only: 64-row warp tiles; fp4 and bf16: 256 (the wgmma kernels)
      const bool fp4 = s == QuantScheme::nvfp4 || s == QuantScheme::mxfp4;
      if (param == -64 && !fp4) continue;
      if (param == -256 && !fp4 && s != QuantScheme::bf16) continue;
      if (in_place && param == -256 && s != QuantScheme::bf16) continue;  // (the fp4 kernel gathers as it loads)
      // every fp8 scheme: 128 (the fp8 wgmma kernel)
      if (param == -128 && !scheme_quantizes_activations(s)) continue;
      if (chain && s != QuantScheme::bf16) continue;  // (bf16 weights only)
      SCOPED_TRACE(quant_scheme_name(s));
      // Every token on expert 3 (more rows than any tile), duplicates included.
      MoEConfig c = small_config(s, 10, 128, 128, 2);
      c.routing.method = RoutingMethod::precomputed;
      Problem skew = make_problem(c, 150, seed);
      std::fill_n(skew.ids.data_as<int32_t>(), 300, 3);
      expect_matches_reference(skew, run_cuda_apply(to_gpu(skew), 150), skew.ids, skew.topk_weights);
      // -1, out of range and valid ids mixed.
      Problem masked = make_problem(c, 6, seed ^ 5);
      const int32_t ids[] = {-1, 3, 123456789, 9, 10, 0, -7, 5, 2, 2, 4, -1};
      std::memcpy(masked.ids.data_as<int32_t>(), ids, sizeof(ids));
      expect_matches_reference(masked, run_cuda_apply(to_gpu(masked), 6), masked.ids, masked.topk_weights);
      // No valid id at all (an all-gather EP rank that none of the batch's ids reach): no rows, no plan items, so the
      // wgmma kernels' claims end at once, and every output row is zero.
      Problem none = make_problem(c, 4, seed ^ 3);
      const int32_t none_ids[] = {-1, 10, -1, 123456789, -7, -1, 10, -1};
      std::memcpy(none.ids.data_as<int32_t>(), none_ids, sizeof(none_ids));
      expect_matches_reference(none, run_cuda_apply(to_gpu(none), 4), none.ids, none.topk_weights);
      // top_k == E.
      MoEConfig all = small_config(s, 8, 128, 128, 8);
      const Problem a = make_problem(all, 5, seed ^ 7);
      expect_matches_reference(a, run_cuda_apply(to_gpu(a), 5), a.ids, a.topk_weights);
      // The row gather's limits (quantize.cu): top_k = 32, the backend's most (a token's slots fill the warp that
      // reads them), and more than 128 scale groups a row (K > 16384: the groups past a lane's registers).
      MoEConfig wide = small_config(s, 40, 128, 128, 32);
      const Problem w = make_problem(wide, 3, seed ^ 11);
      expect_matches_reference(w, run_cuda_apply(to_gpu(w), 3), w.ids, w.topk_weights);
      MoEConfig deep = small_config(s, 4, 16640, 128, 2);
      const Problem d = make_problem(deep, 3, seed ^ 13);
      expect_matches_reference(d, run_cuda_apply(to_gpu(d), 3), d.ids, d.topk_weights);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, CudaExpertsVariant,
                         ::testing::Values(8, 16, 32, -8, -16, -32, -64, -256, -128, -1256, -1128, -2128, -3128, 0, 64),
                         [](const auto& info) {
                           const int p = info.param;
                           if (p == 0) return std::string("grouped");
                           if (p == -256) return std::string("wgmma");
                           if (p == -128) return std::string("fp8_wgmma");
                           if (p == -1256) return std::string("wgmma_in_place");
                           if (p == -1128) return std::string("fp8_wgmma_in_place");
                           if (p == -2128) return std::string("wgmma_no_act_epilogue_in_place");
                           if (p == -3128) return std::string("wgmma_no_act_epilogue");
                           if (p == 64) return std::string("grouped_tile64");
                           return (p < 0 ? "small_m_warp_tiles" : "small_m_tile") + std::to_string(p < 0 ? -p : p);
                         });

// The small-M kernels take, per pass, the smallest token tile that holds an expert's
// remaining rows (up to the launch's tile): experts with 1..97 rows (across every tile boundary)
// give the reference's answer, and the same bits whatever the largest tile (64 for fp4 warp
// tiles), since k is summed in one order per column.
TEST(CudaExperts, SmallMTileFitsEachExpertsRows) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::vector<int32_t> rows = {1, 7, 8, 9, 15, 16, 17, 31, 33, 41, 63, 64, 65, 97};
  std::vector<int32_t> ids;
  for (int32_t e = 0; e < static_cast<int32_t>(rows.size()); ++e) ids.insert(ids.end(), rows[e], e);
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int64_t M = static_cast<int64_t>(ids.size());
  for (QuantScheme s : kCudaSchemes)
    for (bool warp_tiles : {false, true}) {
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + (warp_tiles ? " warp tiles" : " split-k"));
      MoEConfig c = small_config(s, static_cast<int64_t>(rows.size()), 256, 128, 1);
      c.routing.method = RoutingMethod::precomputed;
      Problem p = make_problem(c, M, seed, /*with_bias=*/true);
      std::copy(ids.begin(), ids.end(), p.ids.data_as<int32_t>());
      const GpuProblem g = to_gpu(p);
      const bool fp4 = s == QuantScheme::nvfp4 || s == QuantScheme::mxfp4;
      const int tiles = fp4 && warp_tiles ? 4 : 3;  // 8, 16, 32 rows (and 64)
      Buffer by_tile[4];
      for (int i = 0; i < tiles; ++i) {
        const ForcePath force(true, 8 << i, 0, warp_tiles);
        by_tile[i] = run_cuda_apply(g, M);
      }
      expect_matches_reference(p, by_tile[tiles - 1], p.ids, p.topk_weights);
      for (int i = 1; i < tiles; ++i)
        EXPECT_TRUE(bits_equal(by_tile[0], by_tile[i])) << "largest tile " << (8 << i) << " differs from 8";
      if ((fp4 || s == QuantScheme::bf16) && warp_tiles) {  // the wgmma kernels: n = 64 products up to 64 rows,
                                                            // 128 above; k in another order
        const ForcePath force(true, 256, 0, true);
        expect_matches_reference(p, run_cuda_apply(g, M), p.ids, p.topk_weights);
      }
    }
}

// The wgmma kernels (fp4 and bf16 weights) over many k tiles (K = 704 and 320: 11 and 5 tiles of 64),
// partial blocks of weight rows (N = 640 and 704 in blocks of 128, 256 and 512 rows; bf16 in pairs of blocks as
// well, whose second block then starts past N), items of 256 rows and a partial one per expert at 600 tokens
// (n = 256 and n = 64 products), experts of 257-288 rows at 540 tokens (an item of 256 rows with an n = 32 tail),
// items of 65-128 rows at 240 tokens (n = 128), of up to 64 rows at 60 tokens, biases, both fp4 formats and bf16.
// The bf16 kernel alone and in pairs give the same bits (the same products in the same order).
TEST(CudaExperts, WgmmaKernelsDeepKPartialTiles) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4, QuantScheme::bf16, QuantScheme::fp8_block})
    for (int64_t tokens : {600, 540, 240, 60}) {
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + " tokens " + std::to_string(tokens));
      const bool fp8 = s == QuantScheme::fp8_block;  // K and I multiples of 128, 128-row items
      MoEConfig c = fp8 ? small_config(s, 4, 1152, 384, 2) : small_config(s, 4, 704, 320, 2);
      const Problem p = make_problem(c, tokens, seed, /*with_bias=*/true);
      const GpuProblem g = to_gpu(p);
      Buffer outs[2];
      for (bool second : {false, true}) {  // bf16: in pairs; fp4: persistent
        if (second && fp8) continue;
        const bool pairs = second && s == QuantScheme::bf16, persistent = second && !pairs;
        SCOPED_TRACE(pairs ? "pairs" : persistent ? "persistent" : "one unit a block");
        const ForcePath force(true, fp8 ? 128 : 256, 0, true, false, 128, pairs, persistent);
        Buffer ids, w;
        outs[second] = run_cuda_forward(g, tokens, &ids, &w);
        expect_matches_reference(p, outs[second], ids, w);
      }
      if (!fp8) EXPECT_TRUE(bits_equal(outs[0], outs[1])) << "pairs or persistent blocks differ from one unit a block";
    }
}

// A problem of top-1 routing with rows[e] rows on expert e, in shuffled order, with biases.
Problem rows_per_expert_problem(QuantScheme s, const std::vector<int32_t>& rows, int64_t K, int64_t I, uint64_t seed,
                                ActivationKind act = ActivationKind::silu_mul) {
  std::vector<int32_t> ids;
  for (int32_t e = 0; e < static_cast<int32_t>(rows.size()); ++e) ids.insert(ids.end(), rows[e], e);
  std::mt19937_64 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  MoEConfig c = small_config(s, static_cast<int64_t>(rows.size()), K, I, 1);
  c.routing.method = RoutingMethod::precomputed;
  c.activation.kind = act;
  Problem p = make_problem(c, static_cast<int64_t>(ids.size()), seed, /*with_bias=*/true);
  std::copy(ids.begin(), ids.end(), p.ids.data_as<int32_t>());
  return p;
}

// The persistent fp4 wgmma kernel with more units than blocks, so that a block runs several and carries its ring
// and its claim queue from one to the next: 24 experts of 1-330 rows (items of 256 rows with 1-32-row tails, second
// items, small items, which it runs as 256-token tiles), GEMM1's N = 896 in 7 slabs of 128 rows (about 200 units),
// biases. The same bits as the kernel of one unit per block. GEMM2 reads h2 by TMA (the kTmaX instances; the last
// unit's boxes reach past the tensor), GEMM1 gathers its rows with cp.async.
TEST(CudaExperts, Fp4WgmmaPersistentManyUnitsPerBlock) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  std::vector<int32_t> rows;
  for (int e = 0; e < 24; ++e) rows.push_back(1 + (e * 149) % 330);
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4}) {
    SCOPED_TRACE(quant_scheme_name(s));
    const Problem p = rows_per_expert_problem(s, rows, 192, 448, seed);
    const GpuProblem g = to_gpu(p);
    Buffer outs[2];
    for (bool persistent : {false, true}) {
      SCOPED_TRACE(persistent ? "persistent" : "one unit a block");
      const ForcePath force(true, 256, 0, true, false, 128, false, persistent);
      outs[persistent] = run_cuda_apply(g, p.ids.view().size(0));
      expect_matches_reference(p, outs[persistent], p.ids, p.topk_weights);
    }
    EXPECT_TRUE(bits_equal(outs[0], outs[1])) << "persistent blocks differ from one unit a block";
  }
}

// The fp4 warp tiles at the edges of their loads (session 89: the loads of rows past N read row N - 1, a lane past
// the end of a row skips its load unfilled, X of tokens past an expert's rows is zero-filled unread): K = I = 320
// (GEMM1's and GEMM2's k) end in a half chunk; GEMM2's N = 320 leaves the last four warp tiles of an 8-warp block past
// N (N is a multiple of 64, so a 4-warp block never is); experts of 1-61 rows end inside every token tile. Each largest
// tile against the reference, gated (silu_mul, and swiglu_oai's interleaved rows) and relu2, and the same bits from
// each, since k is summed in one order.
TEST(CudaExperts, Fp4WarpTilesAtTheEdgesOfRowsAndK) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::swiglu_oai, ActivationKind::relu2}) {
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + " " + activation_name(act));
      const Problem p = rows_per_expert_problem(s, {1, 5, 9, 13, 27, 40, 61}, /*K=*/320, /*I=*/320, seed, act);
      const GpuProblem g = to_gpu(p);
      const int64_t M = p.ids.view().size(0);
      Buffer by_tile[4];
      for (int i = 0; i < 4; ++i) {  // largest tile 8, 16, 32, 64 rows
        const ForcePath force(true, 8 << i, 0, /*warp_tiles=*/true);
        by_tile[i] = run_cuda_apply(g, M);
        expect_matches_reference(p, by_tile[i], p.ids, p.topk_weights);
      }
      for (int i = 1; i < 4; ++i)
        EXPECT_TRUE(bits_equal(by_tile[0], by_tile[i])) << "largest tile " << (8 << i) << " differs from 8";
    }
}

// The bf16 wgmma kernel's token tiles: an expert's rows rounded up to 32 (32 .. 256; up to 128 in blocks of 256
// weight rows), 256-row items with a 32-row tail, and a second item after a full one, each edge on both sides, with
// biases; blocks alone, in pairs, and alone with GEMM1's rows read where they lie (x_in_place: one-row boxes, 1-288
// of them a stage), all the same bits.
TEST(CudaExperts, Bf16WgmmaEveryTokenTile) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const Problem p = rows_per_expert_problem(QuantScheme::bf16, {1, 32, 33, 64, 65, 96, 97, 128, 129, 160, 161, 192, 193,
                                                                224, 225, 256, 257, 288, 289, 320, 545},
                                            320, 192, seed);
  const int64_t M = p.ids.view().size(0);
  const GpuProblem g = to_gpu(p);
  Buffer outs[3];
  for (int run : {0, 1, 2}) {  // blocks alone, pairs, alone with GEMM1's rows read in place
    const bool pairs = run == 1, in_place = run == 2;
    SCOPED_TRACE(pairs ? "pairs" : in_place ? "alone, rows in place" : "alone");
    const ForcePath force(true, 256, 0, true, false, 128, pairs, false, false, in_place);
    outs[run] = run_cuda_apply(g, M);
    expect_matches_reference(p, outs[run], p.ids, p.topk_weights);
  }
  EXPECT_TRUE(bits_equal(outs[0], outs[1])) << "pairs differ from blocks alone";
  EXPECT_TRUE(bits_equal(outs[0], outs[2])) << "rows read in place differ from gathered rows";
}

// The fp8 wgmma kernel's token tiles (32, 64 in blocks of 256 weight rows; 96, 128, and 160 for an item with its
// tail of 1-32 rows, in blocks of 128), a second item after a full one, each edge on both sides, with biases; GEMM2's
// N = 384 leaves the second consumer of a 256-row block past N. fp8-block and fp8-tensor (its per-expert scales as
// block scales). GEMM1's rows gathered and read where they lie (x_in_place, the scales row-major): the same bits.
TEST(CudaExperts, Fp8WgmmaEveryTokenTile) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::fp8_block, QuantScheme::fp8_per_tensor}) {
    SCOPED_TRACE(quant_scheme_name(s));
    const Problem p = rows_per_expert_problem(s, {1, 32, 33, 64, 65, 96, 97, 128, 129, 160, 161, 256, 257, 300},
                                              384, 256, seed);
    const GpuProblem g = to_gpu(p);
    Buffer outs[2];
    for (bool in_place : {false, true}) {
      SCOPED_TRACE(in_place ? "rows in place" : "gathered rows");
      const ForcePath force(true, 128, 0, true, false, 128, false, false, false, in_place);
      outs[in_place] = run_cuda_apply(g, p.ids.view().size(0));
      expect_matches_reference(p, outs[in_place], p.ids, p.topk_weights);
    }
    EXPECT_TRUE(bits_equal(outs[0], outs[1])) << "rows read in place differ from gathered rows";
  }
}

// A fused GEMM1 (the 0/1 switch `env` at 1) against GEMM1 + the activation kernel (at 0), on the path the caller
// forces: the fused output matches the reference and equals the unfused one bit for bit (`what`: the fused form).
void expect_fused_gemm1_equals_unfused(const Problem& p, const GpuProblem& g, int64_t M, const char* env,
                                       const char* what) {
  const auto run_with = [&](const char* on) {
    const ScopedEnv scoped(env, on);
    return run_cuda_apply(g, M);
  };
  const Buffer plain = run_with("0");
  const Buffer fused = run_with("1");
  expect_matches_reference(p, fused, p.ids, p.topk_weights);
  EXPECT_TRUE(bits_equal(plain, fused)) << what << " differs from GEMM1 + activation";
}

// The grouped GEMM1 with the gated activation in its epilogue (FUSEDMOE_FUSED_GEMM1, read when the
// experts are built, on by default; it reads w13's gate and up blocks where they lie, three 256-row
// tiles here) gives the bits of GEMM1 + the activation kernel, with several groups per tile row,
// partial 64-row tiles and fp4 chunks of two experts.
TEST(CudaExperts, GatedGemm1EqualsUnfused) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme q : {QuantScheme::bf16, QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::gelu_mul, ActivationKind::gelu_tanh_mul}) {
      SCOPED_TRACE(std::string(quant_scheme_name(q)) + " activation " + std::to_string(static_cast<int>(act)));
      MoEConfig c = small_config(q, 6, 256, 384, 2);
      c.activation.kind = act;
      c.routing.method = RoutingMethod::precomputed;
      const Problem p = make_problem(c, 300, seed);
      const GpuProblem g = to_gpu(p);
      const ForcePath force(false, 16, /*fp4_chunk_experts=*/2, false, false, 128);
      expect_fused_gemm1_equals_unfused(p, g, 300, "FUSEDMOE_FUSED_GEMM1", "the gated GEMM1");
    }
}

// The small-M GEMM1 with the activation in its epilogue (FUSEDMOE_SMALL_M_ACT_EPILOGUE, on by default)
// writes the h2 of GEMM1 + the activation kernel bit for bit: bf16 and both fp4 formats, [gate | up] and
// swiglu-oai's interleaved rows and relu2, with and without w13 biases, 5 tokens (an 8-row item an expert) and
// 70 (several), and I = 192 (not a multiple of 128: GEMM2's last fp4 chunk is partial). The epilogue is in the
// split-k kernels of 8-token tiles alone (kActEpilogueTileTokens); the others run GEMM1, then the activation.
TEST(CudaExperts, SmallMActivationEpilogueEqualsUnfused) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme q : {QuantScheme::bf16, QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::gelu_tanh_mul, ActivationKind::swiglu_oai,
                               ActivationKind::relu2})
      for (bool bias : {false, true})
        for (int64_t M : {5, 70}) {
          SCOPED_TRACE(std::string(quant_scheme_name(q)) + " " + activation_name(act) + (bias ? " bias" : "") +
                       " M=" + std::to_string(M));
          MoEConfig c = small_config(q, 6, 256, 192, 2);
          c.activation.kind = act;
          const Problem p = make_problem(c, M, seed + M + (bias ? 1 : 0), bias);
          const GpuProblem g = to_gpu(p);
          const ForcePath force(true, cuda::kActEpilogueTileTokens, 0, false);
          expect_fused_gemm1_equals_unfused(p, g, M, "FUSEDMOE_SMALL_M_ACT_EPILOGUE",
                                            "GEMM1 with the activation epilogue");
        }
}

// The persistent fp4 wgmma kernel's GEMM1 with silu_mul or swiglu_oai in its epilogue (FUSEDMOE_SMALL_M_ACT_EPILOGUE,
// on by default; its rows paired gate / up by gated_block_row) writes the h2 of GEMM1 + the activation kernel bit for
// bit: nvfp4 and mxfp4, [gate | up] and interleaved rows, with and without w13 biases, items of 1-256 rows and 256
// with a 1-32-row tail, several units a block (GEMM1's 5 slabs x 17 items). gelu_mul, and the one-unit kernel, keep
// GEMM1 + the activation kernel (the same bits too).
TEST(CudaExperts, Fp4WgmmaActivationEpilogueEqualsUnfused) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::vector<int32_t> rows = {1, 40, 64, 65, 100, 128, 129, 200, 256, 257, 288, 289, 300, 545};
  for (QuantScheme q : {QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::swiglu_oai, ActivationKind::gelu_mul})
      for (bool bias : {false, true}) {
        SCOPED_TRACE(std::string(quant_scheme_name(q)) + " " + activation_name(act) + (bias ? " bias" : ""));
        Problem p = rows_per_expert_problem(q, rows, 192, 320, seed + (bias ? 1 : 0));
        p.config.activation.kind = act;
        if (!bias) p.weights.weights.w13_bias = p.weights.weights.w2_bias = Tensor{};
        const GpuProblem g = to_gpu(p);
        const int64_t M = p.ids.view().size(0);
        for (bool persistent : {false, true}) {
          SCOPED_TRACE(persistent ? "persistent" : "one unit a block");
          const ForcePath force(true, cuda::kFp4WgmmaTileTokens, 0, true, false, 128, false, persistent);
          expect_fused_gemm1_equals_unfused(p, g, M, "FUSEDMOE_SMALL_M_ACT_EPILOGUE",
                                            "GEMM1 with the activation epilogue");
        }
      }
}

// The bf16 wgmma GEMM1 with the gated activation in its epilogue (FUSEDMOE_WGMMA_GATE_UP, on by default): w13's rows
// read in groups of 8 gate and 8 up rows (gated_rows_map), h2 written by store_gated_tiles. Every token tile (32 ..
// 256 rows, kT = 2 up to 128 and 1 above, a 32-row tail, second items), w13 biases, silu_mul and swiglu_oai's
// interleaved rows, I = 192 (h2's last 64-column block partial) and 256; rows read in place, gathered, and gathered
// by pairs of blocks: it matches the reference and equals GEMM1 + the activation kernel bit for bit. (gelu_mul and
// the other activations keep the activation kernel.)
TEST(CudaExperts, Bf16WgmmaGateUpTilesEqualTheChain) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::vector<int32_t> rows = {1, 31, 32, 33, 64, 65, 96, 97, 128, 129, 160, 161, 224, 256, 257, 288, 289, 545};
  for (int64_t I : {192, 256})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::swiglu_oai}) {
      Problem p = rows_per_expert_problem(QuantScheme::bf16, rows, 320, I, seed + I);
      p.config.activation.kind = act;
      const int64_t M = p.ids.view().size(0);
      const GpuProblem g = to_gpu(p);
      for (int run : {0, 1, 2}) {
        const bool in_place = run == 0, pairs = run == 2;
        SCOPED_TRACE("I=" + std::to_string(I) + " " + activation_name(act) +
                     (in_place ? ", rows in place" : pairs ? ", rows gathered, pairs" : ", rows gathered"));
        const ForcePath force(true, 256, 0, true, false, 128, pairs, false, false, in_place);
        expect_fused_gemm1_equals_unfused(p, g, M, "FUSEDMOE_WGMMA_GATE_UP",
                                          "the bf16 wgmma GEMM1 with the activation");
      }
    }
}

// n experts of 1 .. max_rows rows each, at random.
std::vector<int32_t> random_row_counts(int n, int max_rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> rows(n);
  for (int32_t& r : rows) r = 1 + static_cast<int32_t>(rng() % max_rows);
  return rows;
}

// The forward with GEMM2 in GEMM1's tail (FUSEDMOE_GEMM2_EARLY=1) against the CPU oracle, bit for bit against GEMM2
// after GEMM1 (=0), and run after run.
void expect_gemm2_early_equals_after(const Problem& p, const GpuProblem& g) {
  const int64_t M = p.ids.view().size(0);
  const Buffer after = [&] {
    const ScopedEnv env("FUSEDMOE_GEMM2_EARLY", "0");
    return run_cuda_apply(g, M);
  }();
  const ScopedEnv env("FUSEDMOE_GEMM2_EARLY", "1");
  const Buffer early = run_cuda_apply(g, M);
  expect_matches_reference(p, early, p.ids, p.topk_weights);
  EXPECT_TRUE(bits_equal(after, early)) << "GEMM2 in GEMM1's tail differs from GEMM2 after GEMM1";
  for (int again = 0; again < 3; ++again)
    EXPECT_TRUE(bits_equal(early, run_cuda_apply(g, M))) << "run " << again + 2 << " differs from the first";
}

// GEMM2 in GEMM1's tail (FUSEDMOE_GEMM2_EARLY, on by default): the bf16 wgmma GEMM2 loads a plan item's h2 rows once
// GEMM1's consumers have counted them stored (WgmmaOverlap) and starts on the SMs GEMM1's blocks leave. (Session 69:
// it caught the counts going to the next unit's item, a 10 s trap in GEMM2's wait.)
// The units and their sums are unchanged, so it equals GEMM2 after GEMM1 bit for bit, run after run: the token tiles
// of the test above (rows in place, gathered, gathered by pairs), and 64 experts of 1-40 rows, whose few hundred
// units a GEMM keep GEMM1 running while GEMM2's first blocks start.
TEST(CudaExperts, Bf16WgmmaGemm2EarlyEqualsAfterGemm1) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::vector<int32_t> many = random_row_counts(64, 40, seed);
  const std::vector<int32_t> tiles = {1, 31, 32, 33, 64, 65, 96, 97, 128, 129, 160, 161, 224, 256, 257, 288, 289, 545};
  for (const auto& [rows, I] : {std::pair{tiles, int64_t{192}}, std::pair{many, int64_t{768}}}) {
    Problem p = rows_per_expert_problem(QuantScheme::bf16, rows, 320, I, seed + I);
    p.config.activation.kind = ActivationKind::silu_mul;
    const GpuProblem g = to_gpu(p);
    for (int run : {0, 1, 2}) {
      const bool in_place = run == 0, pairs = run == 2;
      SCOPED_TRACE(std::to_string(rows.size()) + " experts, I=" + std::to_string(I) +
                   (in_place ? ", rows in place" : pairs ? ", rows gathered, pairs" : ", rows gathered"));
      const ForcePath force(true, 256, 0, true, false, 128, pairs, false, false, in_place);
      expect_gemm2_early_equals_after(p, g);
    }
  }
  // Forwards back to back on one stream, each on the last one's output: the next forward's plan zeroes the counts
  // only once this one's GEMM2, and with it GEMM1, has completed.
  MoEConfig c = small_config(QuantScheme::bf16, 256, 256, 384, 8);
  const GpuProblem g = to_gpu(make_problem(c, 48, seed));
  for (bool in_place : {true, false}) {
    SCOPED_TRACE(in_place ? "chained forwards, rows in place" : "chained forwards, rows gathered");
    const ForcePath force(true, 256, 0, true, false, 128, false, false, false, in_place);
    const ScopedEnv env("FUSEDMOE_GEMM2_EARLY", "1");
    expect_chained_forwards_equal_synchronized(cuda_kernel(g), g.hidden);
  }
}

// The same for the persistent fp4 wgmma kernels (GEMM1 with silu_mul or swiglu_oai in its epilogue, GEMM2 reading
// h2 by TMA): nvfp4 and mxfp4, items of 1-256 rows and 256 with a 1-32-row tail, second items, several units a block
// (GEMM1's 7 slabs of 128 rows by 30 items), and 64 experts of 1-40 rows; then chained forwards back to back.
TEST(CudaExperts, Fp4WgmmaGemm2EarlyEqualsAfterGemm1) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::vector<int32_t> many = random_row_counts(64, 40, seed);
  std::vector<int32_t> tiles;
  for (int e = 0; e < 24; ++e) tiles.push_back(1 + (e * 149) % 330);
  const ForcePath force(true, cuda::kFp4WgmmaTileTokens, 0, true, false, 128, false, /*fp4_persistent=*/true);
  for (QuantScheme q : {QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (const auto& [rows, act] : {std::pair{tiles, ActivationKind::silu_mul},
                                    std::pair{many, ActivationKind::swiglu_oai}}) {
      SCOPED_TRACE(std::string(quant_scheme_name(q)) + ", " + std::to_string(rows.size()) + " experts, " +
                   activation_name(act));
      Problem p = rows_per_expert_problem(q, rows, 192, 448, seed + rows.size());
      p.config.activation.kind = act;
      const GpuProblem g = to_gpu(p);
      expect_gemm2_early_equals_after(p, g);
    }
  for (QuantScheme q : {QuantScheme::nvfp4, QuantScheme::mxfp4}) {
    SCOPED_TRACE(std::string("chained forwards, ") + quant_scheme_name(q));
    const MoEConfig c = small_config(q, 256, 256, 384, 8);
    const GpuProblem g = to_gpu(make_problem(c, 300, seed));
    const ScopedEnv env("FUSEDMOE_GEMM2_EARLY", "1");
    expect_chained_forwards_equal_synchronized(cuda_kernel(g), g.hidden);
  }
}

// The gated GEMM1 writes no GEMM1 output rows, so the workspace leaves their room out from the token
// count where the heuristic turns it on; a workspace sized for M must still serve every smaller count:
// workspace_bytes never shrinks as M grows, and one sized for 600 tokens runs the counts on either side
// of the switches (small-M -> grouped -> the bf16 wgmma kernel, 64 -> 128-row tiles).
TEST(CudaExperts, WorkspaceForMServesFewerTokens) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const std::pair<QuantScheme, const char*> cases[] = {{QuantScheme::bf16, "0"},
                                                       {QuantScheme::bf16, "1"},
                                                       {QuantScheme::fp8_block, "0"},
                                                       {QuantScheme::nvfp4, "0"},
                                                       {QuantScheme::nvfp4, "1"}};
  for (const auto& [q, fused] : cases) {
    SCOPED_TRACE(std::string(quant_scheme_name(q)) + " FUSEDMOE_FUSED_GEMM1=" + fused);
    MoEConfig c = small_config(q, 6, 256, 256, 2);
    c.routing.method = RoutingMethod::precomputed;
    const int64_t max_m = 600;
    const Problem p = make_problem(c, max_m, seed);
    const GpuProblem g = to_gpu(p);
    const FusedMoEKernel kernel = [&] {
      const ScopedEnv env("FUSEDMOE_FUSED_GEMM1", fused);
      return cuda_kernel(g);
    }();
    for (int64_t m = 2; m <= max_m; ++m)
      ASSERT_GE(kernel.workspace_bytes(m), kernel.workspace_bytes(m - 1)) << "at " << m << " tokens";
    const Buffer ws = poisoned_workspace(kernel, max_m);
    for (int64_t m : {36, 37, 72, 73, 96, 97, 384, 385}) {  // m / 3 rows per expert: 12, 24, 32 (fp4), 128 switch
      SCOPED_TRACE("tokens " + std::to_string(m));
      const auto head = [m](const Tensor& t) { return Tensor(t.data(), t.dtype(), {m, t.size(1)}, t.device()); };
      Buffer out = poisoned_bf16_on_gpu(m, c.hidden_size);
      kernel.apply(head(g.hidden), head(g.ids), head(g.topk_weights), out, ws.view());
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      expect_matches_reference(p, head(p.hidden), copy_to(out, Device::cpu()), head(p.ids), head(p.topk_weights));
    }
  }
  // Where the gated GEMM1 runs, the room saved is GEMM1's output: R x 2I bf16, for the token counts on
  // the grouped path above the last count that writes it (bf16 at this narrow hidden size: the wgmma kernel's 2048
  // rows per expert, 6144 tokens; fp4 weights no longer take it).
  MoEConfig c = small_config(QuantScheme::bf16, 6, 256, 256, 2);
  c.routing.method = RoutingMethod::precomputed;
  const GpuProblem g = to_gpu(make_problem(c, 4, seed));
  const auto bytes_with = [&](const char* fused) {
    const ScopedEnv env("FUSEDMOE_FUSED_GEMM1", fused);
    return cuda_kernel(g).workspace_bytes(8192);
  };
  const size_t plain = bytes_with("0"), gated = bytes_with("1");
  EXPECT_EQ(plain - gated, workspace_tensor_bytes(DType::bf16, {8192 * 2, 512}) -
                               workspace_tensor_bytes(DType::bf16, {6144 * 2, 512}));
}

TEST(CudaExperts, MoreLocalExpertsThanPlanThreads) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  // 1500 and 3000 local experts take the 2- and 4-item row plan.
  for (int64_t E : {1500, 3000}) {
    MoEConfig c = small_config(QuantScheme::bf16, E, 128, 64, 4);
    c.routing.method = RoutingMethod::precomputed;
    const Problem p = make_problem(c, 40, seed + E);
    expect_matches_reference(p, run_cuda_apply(to_gpu(p), 40), p.ids, p.topk_weights);
  }
}

TEST(CudaExperts, ExpertMapShardsSumToTheFullLayer) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const int64_t E = 10, M = 33, K = 256;
  const Problem full = make_problem(small_config(QuantScheme::fp8_block, E, K, 128, 3), M, seed);
  const std::vector<std::vector<int32_t>> owned = {{3, 0, 7}, {9, 1, 4, 6}, {2, 8, 5}};
  std::vector<double> sum(static_cast<size_t>(M * K), 0.0);
  for (const auto& experts : owned) {
    const Shard shard = make_shard(full, experts);
    const Buffer out = run_cuda_apply(to_gpu(shard.problem), M);
    expect_matches_reference(shard.problem, out, full.ids, full.topk_weights);
    for (int64_t i = 0; i < M * K; ++i) sum[i] += bf16_to_float(out.data_as<bfloat16>()[i]);
  }
  expect_sum_matches_reference(full, sum, 5e-2);
}

TEST(CudaExperts, RunTwiceIsBitwiseEqualOnBothPaths) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (int path : {0, 128, 64}) {  // small-M, grouped with 128- and 64-row GEMM tiles
    const bool small_m = path == 0;
    const ForcePath force(small_m, 32, /*fp4_chunk_experts=*/5, false, false, small_m ? 128 : path);
    for (QuantScheme s : kCudaSchemes) {
      const Problem p = make_problem(small_config(s, 12, 512, 256, 4), 300, seed, /*with_bias=*/true);
      const GpuProblem g = to_gpu(p);
      EXPECT_TRUE(bits_equal(run_cuda_apply(g, 300), run_cuda_apply(g, 300))) << quant_scheme_name(s);
    }
  }
}

// Applies `kernel` 200 times into the same (poisoned) output and workspace: every output must equal the first bit
// for bit, and the first the reference.
void expect_repeats_bitwise_equal(const Problem& p, const GpuProblem& g, const FusedMoEKernel& kernel, int64_t M) {
  Buffer out = poisoned_bf16_on_gpu(M, g.config.hidden_size);
  const Buffer ws = poisoned_workspace(kernel, M);
  Buffer first;
  int differing = 0;
  for (int rep = 0; rep < 200; ++rep) {
    kernel.apply(g.hidden, g.ids, g.topk_weights, out, ws.view());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    Buffer now = copy_to(out, Device::cpu());
    if (rep == 0) first = std::move(now);
    else if (!bits_equal(first, now)) ++differing;
  }
  EXPECT_EQ(differing, 0) << "of 199 repeats differed from the first run";
  expect_matches_reference(p, first, p.ids, p.topk_weights);
}

// A race shows up as a sporadic wrong tile (the bug catalogue's SM90 MXFP4 grouped GEMM wrote wrong
// tiles in a fraction of calls), so one kernel runs 200 times into the same buffers and every output
// must equal the first bit for bit: the warp tiles (X staged in shared memory by cp.async behind
// barriers) at 8- and 32-token tiles, and the split-k blocks, with per-expert scales and biases.
TEST(CudaExperts, TwoHundredRepeatsAreBitwiseEqual) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4, QuantScheme::bf16, QuantScheme::fp8_block})
    for (int variant : {0, 1, 2}) {  // split-k blocks (tile 8), warp tiles of 8, warp tiles of 32
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + " variant " + std::to_string(variant));
      const ForcePath force(true, variant == 2 ? 32 : 8, 0, variant > 0);
      const int64_t M = 40;
      const Problem p = make_problem(small_config(s, 6, 512, 384, 3), M, seed, /*with_bias=*/true);
      const GpuProblem g = to_gpu(p);
      const FusedMoEKernel kernel = cuda_kernel(g);
      expect_repeats_bitwise_equal(p, g, kernel, M);
    }
}

// compute-sanitizer racecheck reports a write-after-read hazard in CUTLASS's SM90 fp8 blockwise-scaling mainloop
// once its stages are reused (long K): a consumer thread's shared-memory read of a k tile's scales against the
// producer's cp.async refill of that stage, the stage released by another thread of the warpgroup (docs/TESTING.md
// says why the hardware orders them). If the refill could overtake the read, a tile would come out wrong in some
// calls: the CUTLASS fp8-block grouped path (GEMM1 48 k tiles a tile; GEMM2 384 tiles, several a block), 200 times
// into the same buffers, every output equal to the first bit for bit and to the reference.
TEST(CudaExperts, GroupedFp8BlockLongKRepeatsAreBitwiseEqual) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const ForcePath force(false);
  const int64_t M = 384;
  const Problem p = make_problem(small_config(QuantScheme::fp8_block, 4, 6144, 512, 2), M, seed);
  const GpuProblem g = to_gpu(p);
  const FusedMoEKernel kernel = cuda_kernel(g);
  expect_repeats_bitwise_equal(p, g, kernel, M);
}

// Batch invariance on the decode (small-M) path: a token's output does not depend on which other
// tokens share the call — each token is its own mma column, k is summed in a fixed order, and
// activations are quantized per token. Checked bitwise for every scheme and both kernel forms, each
// held fixed (split-k blocks and warp tiles add k in different orders, so the heuristic's switch
// between them is not batch-invariant, as the README says).
TEST(CudaExperts, SmallMPathIsBatchInvariant) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const int64_t M = 13, K = 256;
  for (bool warp_tiles : {false, true}) {
    const ForcePath force(true, 8, 0, warp_tiles);
    for (QuantScheme s : kCudaSchemes) {
      SCOPED_TRACE(std::string(quant_scheme_name(s)) + (warp_tiles ? " warp tiles" : ""));
      const Problem p = make_problem(small_config(s, 10, K, 128, 3), M, seed, /*with_bias=*/true);
      const GpuProblem g = to_gpu(p);
      const Buffer all = run_cuda_apply(g, M);
      const FusedMoEKernel kernel = cuda_kernel(g);
      for (int64_t t : {int64_t(0), int64_t(6), M - 1}) {
        auto row = [t](const Buffer& cpu) {  // row t alone, in its own (aligned) GPU buffer
          const Tensor& v = cpu.view();
          const int64_t cols = v.size(1), bytes = cols * int64_t(dtype_size(v.dtype()));
          return copy_to(Tensor(static_cast<uint8_t*>(v.data()) + t * bytes, v.dtype(), {1, cols}), kGpu);
        };
        Buffer out = poisoned_bf16_on_gpu(1, K);
        const Buffer ws = poisoned_workspace(kernel, 1);
        kernel.apply(row(p.hidden), row(p.ids), row(p.topk_weights), out, ws.view());
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const Buffer alone = copy_to(out, Device::cpu());
        EXPECT_EQ(std::memcmp(alone.view().data(), all.data_as<bfloat16>() + t * K, K * sizeof(bfloat16)), 0)
            << "token " << t << " computed alone differs from the same token in a batch of " << M;
      }
    }
  }
}

TEST(CudaExperts, NanInOneTokenStaysInThatToken) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (bool small_m : {true, false}) {
    const ForcePath force(small_m, 16);
    for (QuantScheme s : {QuantScheme::bf16, QuantScheme::fp8_block}) {
      Problem p = make_problem(small_config(s, 8, 128, 128, 2), 12, seed);
      const Buffer clean = run_cuda_apply(to_gpu(p), 12);
      p.hidden.data_as<bfloat16>()[5 * 128 + 17] = bfloat16{0x7fc0};
      const Buffer dirty = run_cuda_apply(to_gpu(p), 12);
      for (int64_t t = 0; t < 12; ++t)
        if (t != 5)
          EXPECT_EQ(std::memcmp(clean.data_as<bfloat16>() + t * 128, dirty.data_as<bfloat16>() + t * 128, 256), 0)
              << quant_scheme_name(s) << " token " << t;
    }
  }
}

// Expert biases (w13_bias, w2_bias): added by the small-M kernels' epilogue, or by the activation
// kernel and a bias pass on the grouped path.
TEST(CudaExperts, ExpertBiasesOnBothPaths) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (bool small_m : {true, false}) {
    const ForcePath force(small_m, 8);
    for (QuantScheme s : kCudaSchemes)
      for (ActivationKind act : {ActivationKind::swiglu_oai, ActivationKind::silu_mul, ActivationKind::relu2}) {
        SCOPED_TRACE(std::string(quant_scheme_name(s)) + " " + activation_name(act) +
                     (small_m ? " small-M" : " grouped"));
        MoEConfig c = small_config(s, 6, 256, 256, 2);
        c.activation.kind = act;
        const int64_t M = 21;
        const Problem p = make_problem(c, M, seed + M, /*with_bias=*/true);
        expect_matches_reference(p, run_cuda_apply(to_gpu(p), M), p.ids, p.topk_weights);
      }
  }
}

// fp8-tensor's and fp8-channel's grouped GEMMs on both mainloops, against the reference with biases: CUTLASS's fp8
// mainloop, which promotes the tensor cores' sums every 128-wide k block (the default), and its FP8FastAccum one
// (FUSEDMOE_FP8_FAST_ACCUM=1), at both tiles of each.
TEST(CudaExperts, Fp8TensorAndChannelGroupedGemmsBothMainloops) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel}) {
    MoEConfig c = small_config(s, 6, 256, 384, 2);
    c.routing.method = RoutingMethod::precomputed;
    const int64_t M = 300;
    const Problem p = make_problem(c, M, seed, /*with_bias=*/true);
    const GpuProblem g = to_gpu(p);
    for (int tile : {128, 64}) {
      const ForcePath force(false, 16, 0, false, false, tile);
      for (const char* fast_accum : {"0", "1"}) {
        SCOPED_TRACE(std::string(quant_scheme_name(s)) + ", gemm tile " + std::to_string(tile) + ", fast accum " +
                     fast_accum);
        const ScopedEnv env("FUSEDMOE_FP8_FAST_ACCUM", fast_accum);
        expect_matches_reference(p, run_cuda_apply(g, M), p.ids, p.topk_weights);
      }
    }
  }
}

// The promotion at long K (relu2, whose square doubles GEMM1's relative error). Session 42's full-size fuzz found
// FastAccum 2 outputs past the fp8 tolerance (seed 1568: fp8-channel, K = 4096); over 8 problems at K = 4096 and 8192
// (H200, session 43) the promoted mainloop's root-mean-square error over max |reference| was 0.0006-0.0013,
// FastAccum's 0.0021-0.0033 (worst elements 0.006-0.026 against 0.014-0.031).
TEST(CudaExperts, Fp8GroupedGemmsPromoteAtLongK) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel}) {
    MoEConfig c = small_config(s, 4, 8192, 256, 2);
    c.activation.kind = ActivationKind::relu2;
    const int64_t M = 96;
    const Problem p = make_problem(c, M, seed);
    const GpuProblem g = to_gpu(p);
    const ForcePath force(false, 16, 0, false, false, 64);
    SCOPED_TRACE(quant_scheme_name(s));
    const ReferenceError promoted = expect_matches_reference(p, run_cuda_apply(g, M), p.ids, p.topk_weights);
    // (FastAccum's tolerance at short K: Fp8TensorAndChannelGroupedGemmsBothMainloops)
    const ScopedEnv env("FUSEDMOE_FP8_FAST_ACCUM", "1");
    const ReferenceError fast = reference_error(p, p.hidden, run_cuda_apply(g, M), p.ids, p.topk_weights);
    EXPECT_LT(promoted.rms, 0.0017) << "FastAccum's " << fast.rms;
    EXPECT_LT(promoted.rms, fast.rms);
  }
}

// fp8-channel on the FastAccum GEMMs with a short GEMM2 (I <= 1024) above 128 rows per expert: the heuristic gives
// GEMM1 64-row tiles and GEMM2 128-row tiles in one forward; the unforced path against the reference.
TEST(CudaExperts, Fp8ChannelGemm2TileApartFromGemm1s) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(QuantScheme::fp8_per_channel, 2, 256, 768, 1);
  const int64_t M = 400;  // about 200 rows per expert
  const ScopedEnv env("FUSEDMOE_FP8_FAST_ACCUM", "1");
  const cuda::ExpertsPath path = cuda::choose_experts_path(M, 1, 2, c.quant, c.intermediate_size, true);
  ASSERT_FALSE(path.small_m);
  ASSERT_EQ(path.gemm_tile_m, 64);
  ASSERT_EQ(path.gemm2_tile_m, 128);
  const Problem p = make_problem(c, M, seed, /*with_bias=*/true);
  expect_matches_reference(p, run_cuda_apply(to_gpu(p), M), p.ids, p.topk_weights);
}

// fp8-channel's per-row activation quantization at every register width of its kernel (I up to 1, 2, 3, 4, 6 and 8
// steps of 256 columns) and past them (I = 2304: the two-pass kernel), on the small-M, fp8 wgmma and grouped paths,
// silu and swiglu-oai, biases.
TEST(CudaExperts, Fp8ChannelActivationRowWidths) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (int64_t I : {128, 512, 768, 1024, 1536, 2048, 2304})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::swiglu_oai}) {
      MoEConfig c = small_config(QuantScheme::fp8_per_channel, 4, 128, I, 2);
      c.activation.kind = act;
      const int64_t M = 24;
      const Problem p = make_problem(c, M, seed + I, /*with_bias=*/true);
      const GpuProblem g = to_gpu(p);
      for (int path : {0, 1, 2}) {  // small-M, the fp8 wgmma kernel (its activation scales M-major), grouped
        SCOPED_TRACE("I " + std::to_string(I) + (act == ActivationKind::silu_mul ? ", silu" : ", swiglu-oai") +
                     (path == 0 ? ", small-M" : path == 1 ? ", fp8 wgmma" : ", grouped"));
        const ForcePath force(path < 2, path == 1 ? 128 : 16, 0, path == 1, false, 64);
        expect_matches_reference(p, run_cuda_apply(g, M), p.ids, p.topk_weights);
      }
    }
}

// The fp4 split-k blocks of 8 warps (SmallMGemm::split_k_warps; the heuristic's choice at 1-2 tokens on rows of more
// than 2048 values) against the float64 reference: both formats, rows of 23 chunks, the last partial (K = 2880), and
// of fewer chunks than warps (K = 256, I = 192: most warps without a chunk), silu_mul and swiglu_oai (in GEMM1's
// epilogue), biases, 1 and 5 tokens.
TEST(CudaExperts, Fp4SplitKEightWarpsMatchTheReference) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme q : {QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (auto [K, I] : {std::pair<int64_t, int64_t>{2880, 2880}, std::pair<int64_t, int64_t>{256, 192}})
      for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::swiglu_oai})
        for (int64_t M : {1, 5}) {
          SCOPED_TRACE(std::string(quant_scheme_name(q)) + " K=" + std::to_string(K) + " I=" + std::to_string(I) + " " +
                       activation_name(act) + " M=" + std::to_string(M));
          MoEConfig c = small_config(q, 6, K, I, 2);
          c.activation.kind = act;
          const Problem p = make_problem(c, M, seed + M, /*with_bias=*/true);
          const GpuProblem g = to_gpu(p);
          const ForcePath force(true, 8, 0, false, false, 128, false, false, false, false, /*fp4_split_k_warps=*/8);
          Buffer ids, w;
          const Buffer out = run_cuda_forward(g, M, &ids, &w);
          expect_matches_reference(p, out, ids, w);
        }
}

// The fp4 split-k blocks of 4 warps fitted to short rows (SmallMGemm::split_k_fit: 2 chunks a warp in flight up to 8
// chunks a row, 4 up to 16, else 6) take the same chunks in the same order as the unfitted ones: the same bits.
// qwen3-30b-a3b's rows (K = 2048 and I = 768: 16 and 6 chunks), 8 and 12 chunks, 2, and 17 (unfitted either way).
TEST(CudaExperts, Fp4SplitKFittedToShortRowsEqualsTheUnfitted) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme q : {QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (auto [K, I] : {std::pair<int64_t, int64_t>{2048, 768}, std::pair<int64_t, int64_t>{1024, 1536},
                        std::pair<int64_t, int64_t>{2176, 192}})
      for (int64_t M : {1, 5}) {
        SCOPED_TRACE(std::string(quant_scheme_name(q)) + " K=" + std::to_string(K) + " I=" + std::to_string(I) +
                     " M=" + std::to_string(M));
        const Problem p = make_problem(small_config(q, 6, K, I, 2), M, seed + M + K, /*with_bias=*/true);
        const GpuProblem g = to_gpu(p);
        const ForcePath force(true, 8);
        Buffer ids, w, unfitted;
        {
          const ScopedEnv env("FUSEDMOE_FP4_SPLIT_K_FIT", "0");
          unfitted = run_cuda_forward(g, M, &ids, &w);
        }
        const Buffer fitted = run_cuda_forward(g, M, &ids, &w);
        EXPECT_TRUE(bits_equal(fitted, unfitted));
        expect_matches_reference(p, fitted, ids, w);
      }
}

// gpt-oss-120b's layer shape (hidden = intermediate = 2880, not a multiple of 128: the last
// 128-value chunk of every fp4 row is partial), mxfp4 weights, swiglu-oai, biases, top-4 after
// softmax over the top-k; 8 of its 128 experts keep the float64 reference quick. Each path its own test, so that a
// sanitizer report names it: small-M with 4 warps splitting k (GEMM1 with the activation epilogue), small-M with a
// tile per warp and the grouped GEMM (both with the activation kernel after GEMM1).
class GptOssLayerShapeMxfp4 : public ::testing::TestWithParam<int> {};

TEST_P(GptOssLayerShapeMxfp4, MatchesTheReference) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(QuantScheme::mxfp4, 8, 2880, 2880, 4);
  c.activation.kind = ActivationKind::swiglu_oai;
  c.routing.method = RoutingMethod::topk_softmax;
  const int64_t M = 8;
  const Problem p = make_problem(c, M, seed, /*with_bias=*/true);
  const GpuProblem g = to_gpu(p);
  const int variant = GetParam();
  const ForcePath force(variant < 2, 8, 0, variant == 1);
  Buffer ids, w;
  const Buffer out = run_cuda_forward(g, M, &ids, &w);
  expect_matches_reference(p, out, ids, w);
}

INSTANTIATE_TEST_SUITE_P(CudaExperts, GptOssLayerShapeMxfp4, ::testing::Values(0, 1, 2), [](const auto& info) {
  return std::string(info.param == 0 ? "split_k" : info.param == 1 ? "warp_tiles" : "grouped");
});

// fp4 group scales over their range, not only what quantizing random weights gives: mxfp4 ue8m0
// scales 120..136 on w13 (above 128 — scales above 2 — the kernels multiply in two steps, with
// lanes of one warp on both sides) and tiny ones (1..20, values near the bottom of bf16's range)
// on w2; nvfp4 e4m3 scales over every finite positive code (subnormal to 448). Both paths, and the
// wgmma kernel in its three block shapes (9, 300 and 800 tokens: items of up to 64, 128 and 256 rows),
// at 800 tokens its persistent form too (which reads the next k tile's scales before a tile's last rescale).
TEST(CudaExperts, Fp4ScalesOverTheirRange) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4}) {
    SCOPED_TRACE(quant_scheme_name(s));
    MoEConfig c = small_config(s, 6, 256, 128, 2);
    c.routing.method = RoutingMethod::precomputed;
    const int64_t M = 9;
    Problem p = make_problem(c, M, seed);
    auto fill = [&](const Tensor& t, uint64_t salt, int lo, int hi) {  // uniform codes in [lo, hi]
      for (int64_t i = 0; i < t.numel(); ++i) {
        const float u01 = 0.5f * (testing::uniform(seed ^ salt, i) + 1.0f);
        t.data_as<uint8_t>()[i] = uint8_t(lo + std::min(hi - lo, int(u01 * float(hi - lo + 1))));
      }
    };
    const bool mx = s == QuantScheme::mxfp4;
    fill(p.weights.weights.w13_scale, 0x5c1, mx ? 120 : 1, mx ? 136 : 0x7e);
    fill(p.weights.weights.w2_scale, 0x5c2, 1, mx ? 20 : 0x7e);
    const GpuProblem g = to_gpu(p);
    for (int variant : {0, 1, 2}) {  // small-M split-k, small-M warp tiles, grouped (dequantize first)
      SCOPED_TRACE(variant);
      const ForcePath force(variant < 2, 8, 0, variant == 1);
      expect_matches_reference(p, run_cuda_apply(g, M), p.ids, p.topk_weights);
    }
    for (int64_t tokens : {9, 300, 800}) {
      SCOPED_TRACE("wgmma kernel, tokens " + std::to_string(tokens));
      Problem q = make_problem(c, tokens, seed);
      fill(q.weights.weights.w13_scale, 0x5c1, mx ? 120 : 1, mx ? 136 : 0x7e);
      fill(q.weights.weights.w2_scale, 0x5c2, 1, mx ? 20 : 0x7e);
      const GpuProblem gq = to_gpu(q);
      for (bool persistent : {false, true}) {
        if (persistent && tokens != 800) continue;
        SCOPED_TRACE(persistent ? "persistent" : "one unit a block");
        const ForcePath force(true, 256, 0, true, false, 128, false, persistent);
        expect_matches_reference(q, run_cuda_apply(gq, tokens), q.ids, q.topk_weights);
      }
    }
  }
}

// fp4 weights packed in place on the GPU (pack_fp4_weights_sm90, what an engine does once at load) give the bits
// of the experts' own packed copy (weights in the checkpoint's order) on every fp4 path, and match the reference.
TEST(CudaExperts, Fp4WeightsPackedInPlaceEqualTheExpertsCopy) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4}) {
    SCOPED_TRACE(quant_scheme_name(s));
    MoEConfig c = small_config(s, 6, 256, 128, 2);
    c.routing.method = RoutingMethod::precomputed;
    for (int64_t M : {9, 800}) {
      SCOPED_TRACE("tokens " + std::to_string(M));
      const Problem p = make_problem(c, M, seed);
      const GpuProblem checkpoint_order = to_gpu(p);
      GpuProblem packed = to_gpu(p);
      pack_fp4_weights_sm90(packed.config, packed.weights.weights);
      ASSERT_EQ(packed.weights.weights.fp4_packing, Fp4Packing::sm90);
      EXPECT_FALSE(bits_equal(copy_to(packed.weights.weights.w13, Device::cpu()), p.weights.weights.w13));
      for (int variant : {0, 1, 2, 3}) {  // small-M split-k, small-M warp tiles, grouped (dequantize first), wgmma
        if ((variant == 3) != (M == 800)) continue;
        SCOPED_TRACE(variant);
        const ForcePath force(variant != 2, variant == 3 ? 256 : 8, 0, variant == 1 || variant == 3, false, 128, false,
                              variant == 3);
        const Buffer got = run_cuda_apply(packed, M);
        EXPECT_TRUE(bits_equal(got, run_cuda_apply(checkpoint_order, M)));
        expect_matches_reference(p, got, p.ids, p.topk_weights);
      }
    }
  }
}

// GEMM2's fp4 split-k blocks starting in GEMM1's tail at 1 token (ExpertsPath::fp4_gemm2_overlap, the heuristic's
// choice there: GEMM1's blocks trigger the next launch after their pdl_wait, GEMM2's read the plan and issue their first
// weight loads before theirs) give the bits of the chain without it (FUSEDMOE_FP4_GEMM2_OVERLAP=0) and match the
// reference: both formats, gate/up in two halves and interleaved, relu2, biases, K with a partial 128-value chunk
// (320), in CUDA-graph replays (each replay's plan kernel rewrites the items GEMM2 reads before its wait).
TEST(CudaExperts, Fp4Gemm2OverlapAtOneTokenEqualsTheChain) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const int64_t M = 1;
  for (QuantScheme s : {QuantScheme::nvfp4, QuantScheme::mxfp4})
    for (ActivationKind act : {ActivationKind::silu_mul, ActivationKind::swiglu_oai, ActivationKind::relu2})
      for (int64_t K : {256, 320}) {
        SCOPED_TRACE(std::string(quant_scheme_name(s)) + " " + activation_name(act) + " K=" + std::to_string(K));
        MoEConfig c = small_config(s, 6, K, 192, 3);
        c.activation.kind = act;
        ASSERT_TRUE(cuda::choose_experts_path(M, c.routing.top_k, c.num_experts, s).fp4_gemm2_overlap);
        const Problem p = make_problem(c, M, seed + K, /*with_bias=*/true);
        const GpuProblem g = to_gpu(p);
        Buffer chain;
        {
          const ScopedEnv env("FUSEDMOE_FP4_GEMM2_OVERLAP", "0");
          chain = run_cuda_apply(g, M);
        }
        const Buffer overlapped = run_cuda_apply(g, M);
        EXPECT_TRUE(bits_equal(overlapped, chain));
        expect_matches_reference(p, overlapped, p.ids, p.topk_weights);
        const FusedMoEKernel kernel = cuda_kernel(g);
        const Buffer ws = poisoned_workspace(kernel, M);
        Buffer replayed = poisoned_bf16_on_gpu(M, K);
        CapturedGraph graph([&] { kernel.apply(g.hidden, g.ids, g.topk_weights, replayed, ws.view()); });
        for (int rep = 0; rep < 3; ++rep) {
          graph.replay();
          EXPECT_TRUE(bits_equal(copy_to(replayed, Device::cpu()), chain)) << "replay " << rep;
        }
      }
}

TEST(CudaExperts, RealModelShapes) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  // Real hidden/intermediate sizes and top-k, on both paths; fewer experts keep the CPU side
  // (weight synthesis, float64 reference) quick.
  MoEConfig mixtral = small_config(QuantScheme::bf16, 4, 4096, 14336, 2);
  MoEConfig qwen = small_config(QuantScheme::bf16, 32, 2048, 768, 8);
  MoEConfig ds = small_config(QuantScheme::fp8_block, 16, 7168, 2048, 8);
  ds.routing.method = RoutingMethod::deepseek_v3;
  ds.routing.num_expert_group = 8, ds.routing.topk_group = 4, ds.routing.routed_scaling_factor = 2.5f;
  // Nemotron-Nano: relu2, hidden 2688 and intermediate 1856 (multiples of 64, not of 128), top-6.
  MoEConfig nemotron = small_config(QuantScheme::bf16, 8, 2688, 1856, 6);
  nemotron.activation.kind = ActivationKind::relu2;
  for (const MoEConfig& c : {mixtral, qwen, ds, nemotron}) {
    const int64_t M = 24;
    const Problem p = make_problem(c, M, seed);
    const GpuProblem g = to_gpu(p);
    for (bool small_m : {true, false}) {
      SCOPED_TRACE("K=" + std::to_string(c.hidden_size) + (small_m ? " small-M" : " grouped GEMM"));
      const ForcePath force(small_m, 8);
      Buffer ids, w;
      const Buffer out = run_cuda_forward(g, M, &ids, &w);
      expect_matches_reference(p, out, ids, w);
    }
  }
}

// The modular experts' fused decode kernel (bf16 weights, decode sizes; forced here) equals the small-M chain bit
// for bit and matches the reference: every activation kind's family, biases, random ids with repeats, every slot on
// one expert (more rows than a plan item holds: several items stream its weights), -1 and out-of-range ids, an
// expert-map shard, and CUDA-graph replays (the plan kernel zeroes the kernel's counters on every replay).
TEST(CudaExperts, FusedDecodeEqualsTheSmallMChain) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  const auto expect_fused_equals_chain = [](const Problem& p, int64_t M) {
    const GpuProblem g = to_gpu(p);
    Buffer fused, chain;
    {
      const ForcePath force(true, 8, 0, false, /*fused_decode=*/true);
      fused = run_cuda_apply(g, M);
    }
    {
      const ForcePath force(true, 8, 0, false, /*fused_decode=*/false);
      chain = run_cuda_apply(g, M);
    }
    EXPECT_TRUE(bits_equal(fused, chain)) << "the fused decode kernel and the small-M chain differ";
    expect_matches_reference(p, fused, p.ids, p.topk_weights);
  };
  for (ActivationKind a : {ActivationKind::silu_mul, ActivationKind::swiglu_oai, ActivationKind::relu2})
    for (int64_t M : {1, 5, 8, 9, 16, 64}) {
      SCOPED_TRACE(std::string(activation_name(a)) + " M=" + std::to_string(M));
      MoEConfig c = small_config(QuantScheme::bf16, 10, 256, 128, 3);
      c.activation.kind = a;
      c.routing.method = RoutingMethod::precomputed;  // random ids with repeats
      expect_fused_equals_chain(make_problem(c, M, seed + M, /*with_bias=*/M % 2 == 1), M);
      Problem skew = make_problem(c, M, seed ^ M);  // 3M rows on expert 3: items of 8 to 64 rows
      std::fill_n(skew.ids.data_as<int32_t>(), 3 * M, 3);
      expect_fused_equals_chain(skew, M);
    }
  MoEConfig c = small_config(QuantScheme::bf16, 10, 128, 128, 2);
  c.routing.method = RoutingMethod::precomputed;
  {
    SCOPED_TRACE("-1, out of range and valid ids");
    Problem masked = make_problem(c, 6, seed ^ 5);
    const int32_t ids[] = {-1, 3, 123456789, 9, 10, 0, -7, 5, 2, 2, 4, -1};
    std::memcpy(masked.ids.data_as<int32_t>(), ids, sizeof(ids));
    expect_fused_equals_chain(masked, 6);
  }
  {
    SCOPED_TRACE("expert-map shard: 5 of 16 experts local");
    const Problem full = make_problem(routed_config(QuantScheme::bf16, RoutingMethod::softmax_topk), 12, seed ^ 7);
    expect_fused_equals_chain(make_shard(full, {3, 0, 9, 15, 4}).problem, 12);
  }
  {
    SCOPED_TRACE("graph replays");
    const int64_t M = 16;
    const Problem p = make_problem(c, M, seed ^ 11, /*with_bias=*/true);
    const GpuProblem g = to_gpu(p);
    const ForcePath force(true, 8, 0, false, /*fused_decode=*/true);
    const FusedMoEKernel kernel = cuda_kernel(g);
    const Buffer ws = poisoned_workspace(kernel, M);
    Buffer direct = poisoned_bf16_on_gpu(M, 128), replayed = poisoned_bf16_on_gpu(M, 128);
    kernel.apply(g.hidden, g.ids, g.topk_weights, direct, ws.view());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    CapturedGraph graph([&] { kernel.apply(g.hidden, g.ids, g.topk_weights, replayed, ws.view()); });
    for (int rep = 0; rep < 3; ++rep) {
      graph.replay();
      EXPECT_TRUE(bits_equal(copy_to(direct, Device::cpu()), copy_to(replayed, Device::cpu()))) << "replay " << rep;
    }
  }
}

TEST(CudaExperts, CudaGraphReplayEqualsDirectRun) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  for (QuantScheme s :
       {QuantScheme::bf16, QuantScheme::fp8_block, QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel}) {
    const int64_t M = 96;
    const Problem p = make_problem(small_config(s, 16, 512, 256, 4), M, seed);
    const GpuProblem g = to_gpu(p);
    const FusedMoEKernel kernel = cuda_kernel(g);
    const Buffer ws = Buffer::bytes(kernel.workspace_bytes(M), kGpu);
    Buffer out = poisoned_bf16_on_gpu(M, 512);
    CapturedGraph graph([&] { kernel.forward(g.hidden, g.logits, out, ws); });
    graph.replay();
    const Buffer replayed = copy_to(out, Device::cpu());
    // New inputs in the same buffers: a replay computes them (a graph holds no stale data).
    const Problem q = make_problem(p.config, M, seed ^ 99);
    copy_tensor(g.hidden, q.hidden);
    copy_tensor(g.logits, q.logits);
    graph.replay();
    const Buffer replayed_new = copy_to(out, Device::cpu());
    Buffer direct = poisoned_bf16_on_gpu(M, 512);
    kernel.forward(g.hidden, g.logits, direct);
    EXPECT_TRUE(bits_equal(replayed_new, copy_to(direct, Device::cpu()))) << quant_scheme_name(s);
    EXPECT_FALSE(bits_equal(replayed, replayed_new));
    Buffer ids, w;
    GpuProblem gq = to_gpu(q);
    const Buffer q_out = run_cuda_forward(gq, M, &ids, &w);
    expect_matches_reference(q, q_out, ids, w);
  }
}

// tokens * top_k * max(hidden, 2 * intermediate) > 2^31: every index that could overflow 32 bits
// does. Checked against the reference on sampled tokens (first, middle, last), on the heuristic's path
// (CUTLASS at 140000 rows per expert) and on the bf16 wgmma kernel (its TMA rows and 64-bit stores).
TEST(CudaExperts, MoreThan2To31ElementsPerBuffer) {
  FMOE_REQUIRE_GPU();
  const uint64_t seed = test_seed();
  FMOE_SEED_TRACE(seed);
  MoEConfig c = small_config(QuantScheme::bf16, 4, 4096, 2048, 4);
  const int64_t M = 140000, K = 4096;
  ASSERT_GT(M * 4 * std::max(K, int64_t(4096)), int64_t(1) << 31);
  const Problem p = make_problem(c, M, seed);
  const GpuProblem g = to_gpu(p);
  for (bool wgmma : {false, true}) {  // the heuristic's CUTLASS path, then the bf16 wgmma kernel forced
    SCOPED_TRACE(wgmma ? "bf16 wgmma kernel" : "heuristic path");
    std::optional<ForcePath> force;
    if (wgmma) force.emplace(true, 256, 0, true, false, 128, /*wgmma_pairs=*/true);
    Buffer ids, w;
    const Buffer out = run_cuda_forward(g, M, &ids, &w);
    for (int64_t t : {int64_t(0), M / 2, M - 1}) {
      SCOPED_TRACE("token " + std::to_string(t));
      Problem one{c, {}, testing::random_bf16({1, K}, 0), {}, {}, {}, {}};
      one.weights.weights = p.weights.weights;
      std::memcpy(one.hidden.data_as<bfloat16>(), p.hidden.data_as<bfloat16>() + t * K, K * 2);
      const Tensor one_ids(ids.data_as<int32_t>() + t * 4, DType::i32, {1, 4});
      const Tensor one_w(w.data_as<float>() + t * 4, DType::f32, {1, 4});
      const Tensor one_out(const_cast<bfloat16*>(out.data_as<bfloat16>()) + t * K, DType::bf16, {1, K});
      expect_matches_reference(one, one_out, one_ids, one_w);
    }
  }
}

TEST(CudaExperts, BadInputIsAClearErrorAndWritesNothing) {
  FMOE_REQUIRE_GPU();
  const Problem p = make_problem(small_config(QuantScheme::bf16), 4, 3);
  const GpuProblem g = to_gpu(p);
  KernelOptions opt;
  opt.backend = Backend::cuda;
  // Weights on the CPU with the CUDA backend.
  try {
    make_kernel(p.config, p.weights.weights, opt);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
  // fp8-tensor with a static input scale that is not a positive finite number (it lives on the device, so
  // the CPU layout check cannot see it).
  MoEConfig per_tensor = small_config(QuantScheme::fp8_per_tensor);
  const Problem fp8t = make_problem(per_tensor, 4, 3);
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity()}) {
    const OwnedExpertWeights w = copy_expert_weights(fp8t.weights.weights, kGpu);
    copy_tensor(w.weights.a2_scale, Tensor(&bad, DType::f32, {1}));
    try {
      make_kernel(fp8t.config, w.weights, opt);
      ADD_FAILURE() << "no error for a2_scale " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("weights.a2_scale must be a positive finite scale"), std::string::npos)
          << e.what();
    }
  }
  // fp8 schemes need hidden and intermediate sizes in whole 128-value blocks.
  for (QuantScheme s : {QuantScheme::fp8_per_tensor, QuantScheme::fp8_per_channel}) {
    const Problem odd = make_problem(small_config(s, 4, 192, 128, 2), 4, 3);
    try {
      make_kernel(odd.config, copy_expert_weights(odd.weights.weights, kGpu).weights, opt);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("hidden_size % 128 == 0, got hidden_size=192"), std::string::npos)
          << e.what();
    }
  }
  // A misaligned hidden pointer; the output stays untouched.
  const FusedMoEKernel kernel = make_kernel(g.config, g.weights.weights, opt);
  const Buffer big = Buffer::bytes(4 * 256 * 2 + 16, kGpu);
  const Tensor misaligned(big.data_as<uint8_t>() + 2, DType::bf16, {4, 256}, kGpu);
  Buffer out = poisoned_bf16_on_gpu(4, 256);
  try {
    kernel.apply(misaligned, g.ids, g.topk_weights, out);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(bits_equal(copy_to(out, Device::cpu()), poisoned_bf16(4, 256)));
  // Host tensors handed to the CUDA kernel.
  EXPECT_THROW(kernel.apply(p.hidden, g.ids, g.topk_weights, out), Error);
}

}  // namespace
}  // namespace fusedmoe::test
