// The CUTLASS grouped GEMM template behind grouped_gemm.h, instantiated once per kernel
// variant by grouped_gemm_<kind>.cu. Layout of the scratch: the per-group argument arrays
// (filled by fill_group_arguments on the device), then CUTLASS's own workspace.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/detail/blockwise_scale_layout.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/util/packed_stride.hpp>

#include "cuda/cutlass/gate_up_mainloop_sm90.cuh"
#include "cuda/cutlass/gated_epilogue_sm90.cuh"
#include "cuda/cutlass/grouped_gemm.h"

namespace fusedmoe::cuda::sm90 {

using namespace cute;
using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;
using UnderlyingShape = ProblemShape::UnderlyingProblemShape;

constexpr size_t align_up(size_t x) { return (x + 255) / 256 * 256; }

// What the epilogue does with the f32 accumulators before writing bf16 D.
enum class Epi {
  linear,          // alpha (1, or group_scales[g]) times the accumulator
  gated,           // GEMM1 with the gated activation (gated_epilogue_sm90.cuh), D N/2 wide
  channel_scaled,  // times a_scale[row of A] and b_scale[row of B] (fp8-channel: per token x per channel)
};

// D = bf16(acc * col[m] * row[n]), col and row f32 vectors per group (arrays of pointers, one per group):
// col[m] the activation scale of A's row m (a column broadcast along N), row[n] the weight scale of B's row n
// (a row broadcast along M, staged in shared memory). Col is read a value at a time: the group's scales start
// at any row, so no vector alignment holds.
template <class Tile>
using ChannelScaledEvt = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, cutlass::bfloat16_t, float,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90EVT<
        cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float,
                                               cutlass::FloatRoundStyle::round_to_nearest>,
        cutlass::epilogue::fusion::Sm90AccFetch,
        cutlass::epilogue::fusion::Sm90ColBroadcast<0, Tile, float*, float, Stride<_1, _0, _0>, 1>>,
    cutlass::epilogue::fusion::Sm90RowBroadcast<0, Tile, float*, float, Stride<_0, _1, _0>, 4>>;

// Tile config of one variant.
// kEpi: the epilogue (Epi above).
// kScaleN: B's scale granularity along N (block-scaled): 128 (128x128 blocks), or 1 (a scale per weight row
// and 128-wide k block: fp8-channel's per-row scales, applied with the activations' before rounding).
template <class ElementAB, class Tile, class Cluster, class KernelSchedule, class EpilogueSchedule, bool kBlockScaled,
          Epi kEpi = Epi::linear, int kScaleN = 128>
struct GroupedGemm {
  static constexpr bool Gated = kEpi == Epi::gated;
  static constexpr bool ChannelScaled = kEpi == Epi::channel_scaled;
  static constexpr int ScaleN = kScaleN;
  using ElementD = cutlass::bfloat16_t;
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignAB = 16 / sizeof(ElementAB);
  static constexpr int kAlignD = 8;
  using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<1, kScaleN, 128, cute::GMMA::Major::MN,
                                                                cute::GMMA::Major::MN>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

  template <class Fusion>
  using BuiltEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlignD, ElementD, LayoutD*,
      kAlignD, EpilogueSchedule, Fusion>::CollectiveOp;
  template <Epi kE, class = void>
  struct EpilogueOf {  // the builder's epilogue, instantiated only when used
    using type = BuiltEpilogue<cutlass::epilogue::fusion::LinearCombination<ElementD, float>>;
  };
  template <class V>
  struct EpilogueOf<Epi::channel_scaled, V> {
    using type = BuiltEpilogue<ChannelScaledEvt<Tile>>;
  };
  template <class V>
  struct EpilogueOf<Epi::gated, V> {
    using type = GatedEpilogueAdapter<GatedActivationEpilogueArray<cutlass::detail::TagToStrideC_t<LayoutD*>>>;
  };
  using Epilogue = typename EpilogueOf<kEpi>::type;

  using StrideArgA = cute::conditional_t<kBlockScaled, cute::tuple<LayoutA*, LayoutSFA*>, LayoutA*>;
  using StrideArgB = cute::conditional_t<kBlockScaled, cute::tuple<LayoutB*, LayoutSFB*>, LayoutB*>;
  using BuiltMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, StrideArgA, kAlignAB, ElementAB, StrideArgB,
      kAlignAB, float, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  // The gated GEMM1 reads w13's gate and up blocks of a tile where they lie (gate_up_mainloop_sm90.cuh).
  using Mainloop = cute::conditional_t<Gated, GateUpMainloop<BuiltMainloop>, BuiltMainloop>;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;

  // Device argument arrays, carved from the front of the scratch.
  struct Arrays {
    UnderlyingShape* shapes;
    const ElementAB** a;
    const ElementAB** b;
    ElementD** d;
    StrideA* stride_a;
    StrideB* stride_b;
    StrideD* stride_d;
    const float** sfa;
    const float** sfb;
    LayoutSFA* layout_sfa;
    LayoutSFB* layout_sfb;
  };

  static size_t arrays_bytes(int g) {
    return align_up(g * sizeof(UnderlyingShape)) + 3 * align_up(g * sizeof(void*)) + align_up(g * sizeof(StrideA)) +
           align_up(g * sizeof(StrideB)) + align_up(g * sizeof(StrideD)) + 2 * align_up(g * sizeof(void*)) +
           align_up(g * sizeof(LayoutSFA)) + align_up(g * sizeof(LayoutSFB));
  }

  static Arrays carve(void* scratch, int g) {
    auto* p = static_cast<char*>(scratch);
    auto take = [&](size_t bytes) {
      void* r = p;
      p += align_up(bytes);
      return r;
    };
    Arrays a;
    a.shapes = static_cast<UnderlyingShape*>(take(g * sizeof(UnderlyingShape)));
    a.a = static_cast<const ElementAB**>(take(g * sizeof(void*)));
    a.b = static_cast<const ElementAB**>(take(g * sizeof(void*)));
    a.d = static_cast<ElementD**>(take(g * sizeof(void*)));
    a.stride_a = static_cast<StrideA*>(take(g * sizeof(StrideA)));
    a.stride_b = static_cast<StrideB*>(take(g * sizeof(StrideB)));
    a.stride_d = static_cast<StrideD*>(take(g * sizeof(StrideD)));
    a.sfa = static_cast<const float**>(take(g * sizeof(void*)));
    a.sfb = static_cast<const float**>(take(g * sizeof(void*)));
    a.layout_sfa = static_cast<LayoutSFA*>(take(g * sizeof(LayoutSFA)));
    a.layout_sfb = static_cast<LayoutSFB*>(take(g * sizeof(LayoutSFB)));
    return a;
  }

  static typename Gemm::Arguments arguments(const Arrays& arr, const GroupedGemmProblem& p) {
    cutlass::KernelHardwareInfo hw;
    hw.device_id = 0;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = p.sm_count;
    typename Gemm::Arguments args;
    if constexpr (Gated) {
      args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                      {p.num_groups, arr.shapes, nullptr},
                                      {{arr.a, arr.stride_a, arr.b, arr.stride_b},
                                       static_cast<int32_t>(p.N),
                                       static_cast<int32_t>(p.K)},
                                      {arr.d, arr.stride_d, p.gated_act},
                                      hw};
    } else if constexpr (ChannelScaled) {  // the tree's arguments: ((acc, col), row); sfa, sfb: a pointer per group
      decltype(args.epilogue.thread) fusion{{{}, {arr.sfa}, {}}, {arr.sfb}, {}};
      args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                      {p.num_groups, arr.shapes, nullptr},
                                      {arr.a, arr.stride_a, arr.b, arr.stride_b},
                                      {fusion, nullptr, arr.stride_d, arr.d, arr.stride_d},
                                      hw};
    } else {
      decltype(args.epilogue.thread) fusion{};
      fusion.alpha = 1.0f;
      fusion.beta = 0.0f;
      if constexpr (kBlockScaled) {
        args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                        {p.num_groups, arr.shapes, nullptr},
                                        {arr.a, arr.stride_a, arr.b, arr.stride_b, arr.sfa, arr.layout_sfa, arr.sfb,
                                         arr.layout_sfb},
                                        {fusion, nullptr, arr.stride_d, arr.d, arr.stride_d},
                                        hw};
      } else {
        if (p.group_scales) {  // alpha of group g: group_scales[g] (a stride of 1 along the group index)
          fusion.alpha_ptr = p.group_scales;
          fusion.dAlpha = {cute::_0{}, cute::_0{}, 1};
        }
        args = typename Gemm::Arguments{cutlass::gemm::GemmUniversalMode::kGrouped,
                                        {p.num_groups, arr.shapes, nullptr},
                                        {arr.a, arr.stride_a, arr.b, arr.stride_b},
                                        {fusion, nullptr, arr.stride_d, arr.d, arr.stride_d},
                                        hw};
      }
    }
    return args;
  }

  static size_t workspace_bytes(int g, int sm_count) {
    GroupedGemmProblem p;
    p.num_groups = g;
    p.sm_count = sm_count;
    const Arrays arr = carve(nullptr, g);
    return arrays_bytes(g) + align_up(Gemm::get_workspace_size(arguments(arr, p)));
  }
};

template <class G>
__global__ void fill_group_arguments(typename G::Arrays arr, GroupedGemmProblem p) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= p.num_groups) return;
  const int m = p.counts[e], n = static_cast<int>(p.N), k = static_cast<int>(p.K);
  const int64_t row0 = p.offsets[e];
  using AB = cute::remove_cv_t<cute::remove_pointer_t<cute::remove_pointer_t<decltype(arr.a)>>>;
  arr.shapes[e] = UnderlyingShape(m, n, k);
  arr.a[e] = static_cast<const AB*>(p.a) + row0 * p.K;
  arr.b[e] = static_cast<const AB*>(p.b) + int64_t(e) * p.N * p.K;
  const int n_out = G::Gated ? n / 2 : n;  // the gated epilogue writes N/2 columns
  arr.d[e] = static_cast<typename G::ElementD*>(p.d) + row0 * n_out;
  arr.stride_a[e] = cutlass::make_cute_packed_stride(typename G::StrideA{}, cute::make_shape(m, k, 1));
  arr.stride_b[e] = cutlass::make_cute_packed_stride(typename G::StrideB{}, cute::make_shape(n, k, 1));
  arr.stride_d[e] = cutlass::make_cute_packed_stride(typename G::StrideD{}, cute::make_shape(m, n_out, 1));
  if constexpr (G::ChannelScaled) {  // activation scales: group 0 of the grouped M-major layout; weight row scales
    arr.sfa[e] = p.a_scales + row0 * ((p.K + 127) / 128);
    arr.sfb[e] = p.b_scales + int64_t(e) * p.N;
  } else if (p.a_scales) {
    const int64_t kb = (p.K + 127) / 128, nb = (p.N + G::ScaleN - 1) / G::ScaleN;
    arr.sfa[e] = p.a_scales + row0 * kb;
    arr.sfb[e] = p.b_scales + int64_t(e) * nb * kb;
    arr.layout_sfa[e] = G::ScaleConfig::tile_atom_to_shape_SFA(cute::make_shape(m, n, k, 1));
    arr.layout_sfb[e] = G::ScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(m, n, k, 1));
  }
}

template <class G>
const char* run(const GroupedGemmProblem& p, void* scratch, size_t bytes, cudaStream_t stream) {
  if (bytes < G::workspace_bytes(p.num_groups, p.sm_count)) return "grouped GEMM scratch too small";
  const typename G::Arrays arr = G::carve(scratch, p.num_groups);
  fill_group_arguments<G><<<(p.num_groups + 127) / 128, 128, 0, stream>>>(arr, p);
  if (cudaGetLastError() != cudaSuccess) return "launch of fill_group_arguments failed";
  typename G::Gemm gemm;
  const typename G::Gemm::Arguments args = G::arguments(arr, p);
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot implement this grouped GEMM";
  void* cutlass_ws = static_cast<char*>(scratch) + G::arrays_bytes(p.num_groups);
  // The kernel keeps its per-SM TMA descriptors in this workspace and copies them with
  // tensormap.cp_fenceproxy, which compute-sanitizer's initcheck counts as a read of memory
  // nothing wrote. Zeroing it first (tens of KB) keeps initcheck meaningful for everything else.
  const size_t cutlass_ws_bytes = bytes - G::arrays_bytes(p.num_groups);
  if (cudaMemsetAsync(cutlass_ws, 0, cutlass_ws_bytes, stream) != cudaSuccess) return "workspace memset failed";
  if (gemm.initialize(args, cutlass_ws, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream) != cutlass::Status::kSuccess) return "CUTLASS run failed";
  if (cudaGetLastError() != cudaSuccess) return "CUTLASS kernel launch failed";
  return "";
}

}  // namespace fusedmoe::cuda::sm90
