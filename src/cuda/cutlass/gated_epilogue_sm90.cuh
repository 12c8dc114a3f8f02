// Epilogue of the grouped GEMM1 with the gated activation: out = bf16(act(bf16(gate)) * bf16(up)),
// the rounding points of GEMM1 + activation_kernel, so the result equals the unfused path bit for
// bit (test: CudaExperts.GatedGemm1EqualsUnfused).
// Layout: the 256-column tile j holds gate rows [128j, 128j+128) of w13, then the up rows of the
// same columns (its mainloop reads both blocks where they lie, gate_up_mainloop_sm90.cuh) — so a
// tile holds gate column c and up column c + 128 in the same thread: in the GMMA C fragment of a
// 64x256 warpgroup tile, ((2,2,32),1,1), a thread's first 64 elements are gate columns and the
// next 64 the matching up columns. Output bf16 [rows, N/2].
// Stores: each consumer warpgroup stages 64 x 64 outputs at a time in shared memory (rows padded by
// 16 bytes: conflict-free), then writes 128-byte row pieces with 16-byte stores. Measured on H200:
// single-element register-to-global stores made GEMM1 ~15% slower than GEMM1 + the activation
// kernel; per-value F2F conversions and the IEEE divide kept it ~8% slower; packed conversions, the
// fast sigmoid (activation_fn.h) and the 64x256 pingpong schedule put it ahead there (session 11). On the H100 the
// 128x256 cooperative tiles run it faster (grouped_gemm_bf16_gated_coop128.cu, session 73).
// Limits: 256-column tiles of 64 rows per warpgroup (cooperative 128 or pingpong 64), N % 256 == 0
// (I % 128 == 0), silu/gelu/gelu_tanh without a w13 bias.
#pragma once

#include <cuda_bf16.h>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/detail.hpp>
#include <cutlass/epilogue/dispatch_policy.hpp>
#include <cutlass/epilogue/thread/linear_combination.h>

#include "core/activation_fn.h"

namespace fusedmoe::cuda::sm90 {

enum class GatedAct : int { silu = 1, gelu = 2, gelu_tanh = 3 };

__device__ inline float gated_act_value(int kind, float gate, float up) {
  if (kind == static_cast<int>(GatedAct::silu)) return act_silu(gate) * up;
  if (kind == static_cast<int>(GatedAct::gelu)) return act_gelu(gate) * up;
  return act_gelu_tanh(gate) * up;
}

template <class StrideD_>
class GatedActivationEpilogueArray {
 public:
  using EpilogueSchedule = cutlass::epilogue::PtrArrayNoSmemWarpSpecialized;
  using DispatchPolicy = EpilogueSchedule;
  using ElementD = cutlass::bfloat16_t;
  using ElementOutput = ElementD;
  using ElementAccumulator = float;
  using ElementCompute = float;
  using ElementScalar = float;
  using ElementC = void;
  using StrideC = StrideD_;
  using StrideD = StrideD_;
  using InternalStrideC = cute::remove_pointer_t<StrideC>;
  using InternalStrideD = cute::remove_pointer_t<StrideD>;
  using ThreadEpilogueOp = cutlass::epilogue::thread::LinearCombination<ElementD, 1, float, float>;
  using GmemTiledCopyC = void;
  using GmemTiledCopyD = void;
  static constexpr int NumEpilogueWarpGroups = 2;  // cooperative; pingpong has two consumer warpgroups too

  // A warpgroup stages half its 64 x 128 outputs at a time: 18 KB in all left the 64x256 pingpong
  // mainloop its 5 stages (the whole tile, 34 KB, left 4: 4% slower at mixtral's 256 tokens, H200); the
  // 128x256 cooperative mainloop keeps 4.
  static constexpr int kStageCols = 64;
  static constexpr int kStageLd = kStageCols + 8;  // bf16 per staged row, + 16 bytes: no bank conflicts
  struct SharedStorage {
    alignas(128) uint16_t stage[NumEpilogueWarpGroups][64 * kStageLd];
  };

  struct Arguments {
    ElementD** ptr_D = nullptr;  // per group: its rows of the [R, N/2] output
    StrideD dD{};                // per group: strides of [rows, N/2]
    int act = 1;                 // GatedAct
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&, int) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.act >= 1 && args.act <= 3;
  }

  CUTLASS_HOST_DEVICE GatedActivationEpilogueArray(Params const& p) : params(p) {}
  CUTLASS_DEVICE bool is_source_needed() { return false; }

  template <class ProblemShapeMNKL, class BlockShapeMNK, class BlockCoordMNKL, class FrgEngine, class FrgLayout,
            class TiledMma, class ResidueMNK>
  CUTLASS_DEVICE void operator()(ProblemShapeMNKL problem_shape_mnkl, BlockShapeMNK blk_shape_MNK,
                                 BlockCoordMNKL blk_coord_mnkl, cute::Tensor<FrgEngine, FrgLayout> const& accumulators,
                                 TiledMma tiled_mma, ResidueMNK, int thread_idx, char* smem) {
    using namespace cute;
    static_assert(size<1>(BlockShapeMNK{}) == 256, "the gated epilogue takes 256-column tiles");
    constexpr int kHalf = decltype(size(accumulators))::value / 2;
    const int M = get<0>(problem_shape_mnkl), N = get<1>(problem_shape_mnkl);
    auto [m_coord, n_coord, k_coord, l_coord] = blk_coord_mnkl;
    Tensor cD = local_tile(make_identity_tensor(make_shape(M, N)), take<0, 2>(blk_shape_MNK),
                           make_coord(m_coord, n_coord));
    auto thr_mma = tiled_mma.get_thread_slice(thread_idx);
    Tensor tCcD = thr_mma.partition_C(cD);
    // Cooperative: the two consumer warpgroups split a 128-row tile; pingpong: each has its own
    // 64-row tile. Either way the stage and the barrier belong to the warpgroup.
    const int wg = cutlass::canonical_warp_group_idx() - 1, t = thread_idx % 128;
    const int row0 = int(m_coord) * int(size<0>(blk_shape_MNK)) + (thread_idx / 128) * 64;
    const int col0 = int(n_coord) * 256;
    uint16_t* stage = reinterpret_cast<SharedStorage*>(smem)->stage[wg];
    const int rows = M - row0;  // may be <= 0 (a tile past the group's rows) or > 64
    ElementD* out = params.ptr_D[l_coord] + int(n_coord) * 128;
    const int64_t ld = get<0>(params.dD[l_coord]);  // row stride of the [rows, N/2] output
    // Accumulator element i is (row, gate column c); i + kHalf is (row, up column c + 128); i and
    // i + 1 (i even) are columns c and c + 1 of one row; elements [0, kHalf / 2) hold gate columns
    // [0, 64), the rest [64, 128) (the GMMA C fragment, ((2,2,32),1,1): column 8 * (i / 4) + ...).
    // Pairs round with one packed conversion each (per-value F2F conversions were the bottleneck).
    CUTLASS_PRAGMA_UNROLL
    for (int round = 0; round < 2; ++round) {  // 64 output columns per round
      cutlass::arch::NamedBarrier::sync(128, wg);  // the previous copy-out has read the stage
      CUTLASS_PRAGMA_UNROLL
      for (int i = round * kHalf / 2; i < (round + 1) * kHalf / 2; i += 2) {
        const auto cg = tCcD(i);
        const int r = get<0>(cg) - row0, c = get<1>(cg) - col0 - round * kStageCols;
        const float2 gate = __bfloat1622float2(__floats2bfloat162_rn(accumulators(i), accumulators(i + 1)));
        const float2 up =
            __bfloat1622float2(__floats2bfloat162_rn(accumulators(i + kHalf), accumulators(i + 1 + kHalf)));
        *reinterpret_cast<__nv_bfloat162*>(stage + r * kStageLd + c) = __floats2bfloat162_rn(
            gated_act_value(params.act, gate.x, up.x), gated_act_value(params.act, gate.y, up.y));
      }
      cutlass::arch::NamedBarrier::sync(128, wg);
      CUTLASS_PRAGMA_UNROLL
      for (int k = t; k < 64 * 8; k += 128) {  // 8 pieces of 16 bytes per staged row
        const int r = k / 8, piece = k % 8;
        if (r < rows)
          *reinterpret_cast<uint4*>(out + (row0 + r) * ld + round * kStageCols + piece * 8) =
              *reinterpret_cast<const uint4*>(stage + r * kStageLd + piece * 8);
      }
    }
  }

 private:
  Params params;
};

// CUTLASS's Sm90TmaWarpSpecializedAdapter uses the epilogue's SharedStorage for its tensormap
// storage too, which would place the stage twice in shared memory; this adapter gives the kernel an
// empty tensormap storage (the epilogue has no TMA descriptors) and keeps the rest.
template <class Op>
class GatedEpilogueAdapter : public cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<Op> {
  using Base = cutlass::epilogue::collective::detail::Sm90TmaWarpSpecializedAdapter<Op>;

 public:
  struct TensorMapStorage {};
  using Base::Base;

  CUTLASS_DEVICE auto load_init(typename Op::Params const&, TensorMapStorage&, int32_t, int32_t) {
    return cute::make_tuple(nullptr);
  }
  CUTLASS_DEVICE auto store_init(typename Op::Params const&, TensorMapStorage&, int32_t, int32_t, int32_t) {
    return cute::make_tuple(nullptr);
  }
  template <bool IsLoad, class ProblemShapeMNKL>
  CUTLASS_DEVICE void tensormaps_perform_update(TensorMapStorage&, typename Op::Params const&,
                                                cute::TmaDescriptor const*, ProblemShapeMNKL, int32_t, int32_t) {}
  template <bool IsLoad>
  CUTLASS_DEVICE void tensormaps_cp_fence_release(TensorMapStorage&, cute::TmaDescriptor const*, int32_t) {}
};

}  // namespace fusedmoe::cuda::sm90
