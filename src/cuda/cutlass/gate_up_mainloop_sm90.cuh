// The grouped GEMM1 mainloop of the gated CUTLASS GEMM (gated_epilogue_sm90.cuh), reading w13 where it lies.
// What: CUTLASS's sm90 ptr-array (grouped) TMA warp-specialized mainloop, built by the collective builder, with B's
// TMA load replaced. The gated epilogue wants the 256-row N tile j to hold gate rows [128j, 128j + 128) and then
// the up rows of the same columns, [I + 128j, I + 128j + 128) of w13 = [gate; up] (I = N / 2). Here B's N mode is
// seen as (128, 2, N / 256) with strides (K, I K, 128 K): tile j is then exactly those two blocks, and one 4-D TMA
// box (64 k values x 128 rows x 2 halves, tile j at coordinate 3) loads them into the stage as one 256-row tile.
// So the gated GEMM1 needs no second, blocked copy of w13 (on the H100 the 4-D box ran as fast as that copy's 2-D
// one, session 75). The pipeline, the wgmma loop, A's loads and the per-group address update are the builder's;
// A's dims change per group (its rows), B's never (every expert has the same N and K), so B's descriptor is made
// once on the host with the real N and K and only its address changes.
// Layout: B bf16 [E, N, K] K-major (a pointer per group), N = 2I, gate rows then up rows.
// Limits: N % 256 == 0, 256-row N tiles, clusters of one CTA, every group the same N and K (Arguments::n, k).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>

namespace fusedmoe::cuda::sm90 {

template <class Built>
struct GateUpMainloop : Built {
  using typename Built::InternalElementA;
  using typename Built::InternalElementB;
  using typename Built::MainloopPipeline;
  using typename Built::PipelineState;
  using typename Built::SmemLayoutA;
  using typename Built::SmemLayoutB;
  using typename Built::TensorMapStorage;
  using typename Built::TensorStorage;
  using typename Built::TileShape;

  static_assert(cute::size<1>(TileShape{}) == 256, "the gate/up mainloop takes 256-row N tiles");
  static_assert(cute::size(typename Built::DispatchPolicy::ClusterShape{}) == 1, "clusters of one CTA only");
  static_assert(Built::IsGroupedGemmKernel, "the gate/up mainloop is for the grouped (ptr-array) GEMM");

  // One expert's w13 as B: ((128, 2, N / 256), K, 1) : ((K, I K, 128 K), 1, 0). The same function builds the
  // type below and the host's tensor, so that the two TMA types agree.
  template <class Ptr>
  CUTE_HOST_DEVICE static auto b_tensor(Ptr ptr, int32_t n, int32_t k) {
    using namespace cute;
    const int64_t row = k;
    return make_tensor(ptr, make_layout(make_shape(make_shape(_128{}, _2{}, n / 256), k, int32_t(1)),
                                        make_stride(make_stride(row, row * (n / 2), row * 128), _1{}, _0{})));
  }
  template <class Ptr>
  static auto make_tma_b(Ptr ptr, int32_t n, int32_t k) {
    using namespace cute;
    return make_tma_copy(typename Built::GmemTiledCopyB{}, b_tensor(ptr, n, k), SmemLayoutB{}(_, _, Int<0>{}),
                         make_shape(size<1>(TileShape{}), size<2>(TileShape{})), Int<1>{});
  }
  using TmaB = decltype(make_tma_b(static_cast<InternalElementB const*>(nullptr), 256, 64));

  struct Arguments : Built::Arguments {
    int32_t n = 0;  // N (2I) and K of every group
    int32_t k = 0;
  };
  struct Params : Built::Params {
    TmaB tma_load_gate_up;
  };

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape shapes, Arguments const& args, void* workspace) {
    Params p{Built::to_underlying_arguments(shapes, args, workspace), TmaB{}};
    // As the builder's: an address for the descriptor (replaced per group before the first load), 16-byte aligned.
    auto const* first = reinterpret_cast<InternalElementB const*>(reinterpret_cast<uint64_t>(args.ptr_B) & ~uint64_t(15));
    p.tma_load_gate_up = make_tma_b(first, args.n, args.k);
    return p;
  }

  template <class ProblemShape>
  static bool can_implement(ProblemShape shapes, Arguments const& args) {
    return Built::can_implement(shapes, args) && args.n > 0 && args.n % 256 == 0 && args.k > 0 && args.k % 8 == 0;
  }

  // (BLK_M, BLK_K, m, k, l) tiles of A as the builder's; (BLK_N, BLK_K, n, k, l) tiles of B over the gate/up view.
  template <class ProblemShape_MNKL>
  CUTLASS_DEVICE auto load_init(ProblemShape_MNKL const& mnkl, Params const& params) const {
    using namespace cute;
    auto built = Built::load_init(mnkl, params);
    Tensor mB = params.tma_load_gate_up.get_tma_tensor(
        shape(b_tensor(static_cast<InternalElementB const*>(nullptr), get<1>(mnkl), get<2>(mnkl))));
    Tensor gB = local_tile(mB, TileShape{}, make_coord(_, _, _), Step<Underscore, _1, _1>{});
    return make_tuple(get<0>(built), gB);
  }

  // The producer's loads: per k tile, A's box and B's gate/up box into the next free stage.
  template <class TensorA, class TensorB, class TensorMapA, class TensorMapB, class KTileIterator, class BlockCoord>
  CUTLASS_DEVICE void load(Params const& params, MainloopPipeline pipeline, PipelineState write,
                           cute::tuple<TensorA, TensorB> const& inputs,
                           cute::tuple<TensorMapA, TensorMapB> const& maps, BlockCoord const& blk,
                           KTileIterator k_tile, int k_tiles, int /*thread_idx*/, uint32_t /*block_rank_in_cluster*/,
                           TensorStorage& smem) {
    using namespace cute;
    if (!elect_one_sync()) return;
    Tensor sA = make_tensor(make_smem_ptr(smem.smem_A.data()), SmemLayoutA{});  // (BLK_M, BLK_K, PIPE)
    Tensor sB = make_tensor(make_smem_ptr(smem.smem_B.data()), SmemLayoutB{});  // (BLK_N, BLK_K, PIPE)
    auto [m, n, k, l] = blk;
    auto tma_a = params.tma_load_a.get_slice(0);
    auto tma_b = params.tma_load_gate_up.get_slice(0);
    Tensor tAgA = tma_a.partition_S(get<0>(inputs)(_, _, m, _, l));  // (TMA, TMA_M, TMA_K, k)
    Tensor tAsA = tma_a.partition_D(sA);                              // (TMA, TMA_M, TMA_K, PIPE)
    Tensor tBgB = tma_b.partition_S(get<1>(inputs)(_, _, n, _, l));  // (TMA, TMA_N, TMA_K, k)
    Tensor tBsB = tma_b.partition_D(sB);                              // (TMA, TMA_N, TMA_K, PIPE)
    for (; k_tiles > 0; --k_tiles, ++k_tile, ++write) {
      pipeline.producer_acquire(write);
      auto* full = pipeline.producer_get_barrier(write);
      const int stage = write.index();
      copy(params.tma_load_a.with(get<0>(maps), *full), tAgA(_, _, _, *k_tile), tAsA(_, _, _, stage));
      copy(params.tma_load_gate_up.with(get<1>(maps), *full), tBgB(_, _, _, *k_tile), tBsB(_, _, _, stage));
    }
  }

  // This SM's two descriptors (A's, and B's gate/up one) into shared memory, to be edited per group.
  CUTLASS_DEVICE auto tensormaps_init(Params const& params, TensorMapStorage& smem_maps, int32_t sm_count,
                                      int32_t sm_idx) {
    auto* gmem = reinterpret_cast<cute::TmaDescriptor*>(params.tensormaps);
    if (cute::elect_one_sync()) {
      smem_maps.smem_tensormap_A = *params.tma_load_a.get_tma_descriptor();
      smem_maps.smem_tensormap_B = *params.tma_load_gate_up.get_tma_descriptor();
    }
    __syncwarp();
    return cute::make_tuple(&gmem[sm_idx], &gmem[sm_idx + sm_count]);
  }

  // Per group: both addresses, and A's rows; B's dims and strides stay as made on the host.
  template <class TensorMapA, class TensorMapB, class ProblemShape_MNKL>
  CUTLASS_DEVICE void tensormaps_perform_update(TensorMapStorage& smem_maps, Params const& params,
                                                cute::tuple<TensorMapA, TensorMapB> const& /*maps*/,
                                                ProblemShape_MNKL mnkl, int32_t group) {
    using namespace cute;
    if (!elect_one_sync()) return;
    this->tensormaps_replace_global_address(smem_maps, params, group);
    cute::array<uint32_t, 5> dims = {1, 1, 1, 1, 1};
    cute::array<uint64_t, 5> strides = {0, 0, 0, 0, 0};
    const uint32_t M = get<0>(mnkl), K = get<2>(mnkl);
    Tensor a = make_tensor(static_cast<InternalElementA const*>(nullptr), make_shape(M, K, Int<1>{}), params.dA[group]);
    detail::fill_tma_gmem_shape_stride(params.tma_load_a, a, dims, strides);
    for (uint64_t& s : strides) s = s * sizeof_bits_v<InternalElementA> / 8;
    tma_descriptor_replace_dims_strides_in_shared_mem(smem_maps.smem_tensormap_A, dims, strides);
  }
};

}  // namespace fusedmoe::cuda::sm90
