// Grouped GEMMs of the large-M path, on CUTLASS (sm_90a: TMA + WGMMA, warp-specialized,
// persistent). One GEMM runs over all local experts:
//   D[rows of e, N] = A[rows of e, K] . B[e]^T,   B[e] = weights [N, K] (K-major both sides).
// Per-group shapes and pointers are built on the device from the row plan (no host sync);
// experts without rows are empty groups. fp8_block: e4m3 operands, f32 scales per 1x128 (A,
// grouped M-major) and 128x128 (B, [E, K/128, N/128]) blocks, f32 accumulation promoted
// per k block; fp8_group_scaled: e4m3 operands with one f32 scale per group (fp8-tensor: the static activation
// scale times the expert's weight scale) applied in the epilogue, f32 accumulation promoted per k
// block; fp8_channel_scaled: the same mainloop, the epilogue multiplying by A's row scale and B's row
// scale (fp8-channel: per token x per channel). Those two also come with CUTLASS's FP8FastAccum
// mainloop (GroupedGemmProblem::fast_accum): no promotion, wider tiles, less accurate at long K.
// Output bf16. This header stays free of CUTLASS and fusedmoe types so the
// CUTLASS translation units compile on their own (C++17).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fusedmoe::cuda {

enum class GroupedGemmKind { bf16, fp8_block, fp8_group_scaled, fp8_channel_scaled };

struct GroupedGemmProblem {
  int num_groups = 0;
  int64_t N = 0, K = 0;
  const void* a = nullptr;           // [R, K] bf16 or e4m3, rows grouped by expert
  const float* a_scales = nullptr;   // fp8_block: grouped M-major [*, K/128]; fp8_channel_scaled reads group 0
  const void* b = nullptr;           // [E, N, K]
  const float* b_scales = nullptr;   // fp8_block: [E, K/128, N/128] (MN-major); fp8_channel_scaled [E, N],
                                     // 16-byte aligned
  const float* group_scales = nullptr;  // fp8_group_scaled: device [num_groups], D = scale[g] * A.B^T
  void* d = nullptr;                 // bf16 [R, N]
  const int32_t* counts = nullptr;   // device [E]
  const int32_t* offsets = nullptr;  // device [E + 1]
  int sm_count = 0;
  int tile_m = 128;                  // rows of A per tile: 128 (cooperative) or 64 (pingpong)
  bool fast_accum = false;           // fp8_group_scaled, fp8_channel_scaled: the FP8FastAccum variants
  int gated_act = 0;                 // > 0: GEMM1 with the gated activation in its epilogue (sm90::GatedAct:
                                     // 1 silu, 2 gelu, 3 gelu_tanh), B as w13 [gate; up], d bf16 [R, N/2]
};

// Scratch bytes (argument arrays + CUTLASS workspace) for `num_groups` groups, either tile.
size_t grouped_gemm_workspace_bytes(GroupedGemmKind kind, int num_groups, int sm_count);
// Returns an empty string on success, else why CUTLASS refused.
const char* run_grouped_gemm(GroupedGemmKind kind, const GroupedGemmProblem& p, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream);

// The compiled variants, one translation unit each: per kind, 128-row tiles on two consumer
// warpgroups (cooperative) and 64-row tiles, one per warpgroup in turn (pingpong).
struct GroupedGemmVariant {
  size_t (*workspace_bytes)(int num_groups, int sm_count);
  const char* (*run)(const GroupedGemmProblem& p, void* workspace, size_t bytes, cudaStream_t stream);
};
extern const GroupedGemmVariant kGroupedGemmBf16Coop128x256;
extern const GroupedGemmVariant kGroupedGemmBf16Pingpong64x256;
extern const GroupedGemmVariant kGroupedGemmFp8Coop128x128;
extern const GroupedGemmVariant kGroupedGemmFp8Pingpong64x128;
// fp8 with one scale per group (fp8-tensor): 128x128 cooperative and 64x128 pingpong.
extern const GroupedGemmVariant kGroupedGemmFp8GroupScaledCoop128x128;
extern const GroupedGemmVariant kGroupedGemmFp8GroupScaledPingpong64x128;
extern const GroupedGemmVariant kGroupedGemmFp8GroupScaledFastAccumCoop128x256;  // fast_accum: wider tiles
extern const GroupedGemmVariant kGroupedGemmFp8GroupScaledFastAccumPingpong64x256;
// fp8 with A's and B's row scales in the epilogue (fp8-channel): 128x128 cooperative and 64x128 pingpong.
extern const GroupedGemmVariant kGroupedGemmFp8ChannelScaledCoop128x128;
extern const GroupedGemmVariant kGroupedGemmFp8ChannelScaledPingpong64x128;
extern const GroupedGemmVariant kGroupedGemmFp8ChannelScaledFastAccumCoop128x256;  // fast_accum: wider tiles
extern const GroupedGemmVariant kGroupedGemmFp8ChannelScaledFastAccumPingpong64x256;
// bf16 GEMM1 with the gated activation in the epilogue, 128x256 cooperative (gated_epilogue_sm90.cuh).
extern const GroupedGemmVariant kGroupedGemmBf16GatedCoop128x256;

}  // namespace fusedmoe::cuda
