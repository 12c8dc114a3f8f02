// AMX tile GEMMs of the CPU expert MLP (TDPBF16PS: bf16 products summed in f32), every scheme.
// Layout: 16 weight rows x 32 k are the A operand: bf16 rows loaded where they lie (row stride;
// a zero-padded copy for the tiles at the matrix's ends), e4m3 and fp4 rows converted to bf16
// 64 k at a time just before use (fp4 values times their group scales, which is exact; nvfp4's
// global scale multiplies the sums). The activations, packed per expert in tiles of 16 rows with
// each k pair interleaved ([K32 / 2][16 rows][2] bf16), are the B operand. A C tile holds
// [16 weight rows][16 activation rows] f32, transposed into output rows with the scales and bias
// (AVX-512). An item streams each of its 16-row weight blocks once for up to 64 activation rows
// (four C tiles).
// Order: every output element sums k in 32-wide steps from k = 0 (fp8-block: within each
// 128-wide group, promoted with its scales in f32 as the f32 GEMM does), the order TDPBF16PS
// adds its pairs in; it depends on K alone, so results are deterministic and batch-invariant.
// Limits: TDPBF16PS reads bf16 denormals as zero and flushes f32 results below 2^-126 to zero.
// Needs AMX-BF16 and AVX512-BW, -VBMI and -BF16 at compile time and the OS's grant of tile state.
#include "cpu/amx_gemm.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/thread_pool.h"
#include "fusedmoe/error.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && \
    defined(__AVX512BF16__) && defined(__linux__)
#define FUSEDMOE_HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define FUSEDMOE_HAVE_AMX 0
#endif

namespace fusedmoe::cpu::amx {
namespace {

constexpr int64_t kTileRows = 16;  // weight rows of a tile; activation rows of a packed tile
constexpr int64_t kTileK = 32;     // k of one TDPBF16PS
constexpr int64_t kChunkK = 64;    // k of one conversion of e4m3 or fp4 weight rows
constexpr int kMaxTiles = 4;       // packed activation tiles of an item, one C tile each
constexpr int64_t kColBlock = 64;  // weight rows of an item
constexpr int64_t kPrefetchBytes = 192;  // how far ahead converted rows are prefetched (e4m3: best of 64-1024)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t packed_tiles(int64_t rows, int64_t experts) {
  return (rows + kTileRows - 1) / kTileRows + std::min(experts, rows);
}

bool request_tile_state() {
#if FUSEDMOE_HAVE_AMX
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtileData = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0;
#else
  return false;
#endif
}

#if FUSEDMOE_HAVE_AMX
// bf16 bits of a float that is exactly bf16.
uint16_t bf16_bits(float v) { return uint16_t(float_bits(v) >> 16); }

// Rows [r0, r0 + n) of A (f32 values that are exactly bf16) as one packed tile, zeros past n rows and past K.
void pack_tile(const float* A, int64_t K, int64_t K32, int64_t r0, int64_t n, uint16_t* dst) {
  std::memset(dst, 0, static_cast<size_t>(K32 * kTileRows) * sizeof(uint16_t));
  for (int64_t m = 0; m < n; ++m) {
    const float* a = A + (r0 + m) * K;
    for (int64_t k = 0; k < K; ++k) dst[(k >> 1) * 2 * kTileRows + m * 2 + (k & 1)] = bf16_bits(a[k]);
  }
}

// e4m3 codes to bf16 bits (exact), 64 at a time: each result byte looked up by the code's 7-bit magnitude in a
// 128-entry byte table (low and high bytes apart), the sign put on the high byte.
class E4m3ToBf16 {
 public:
  E4m3ToBf16() {
    alignas(64) uint8_t lo[128], hi[128];
    for (int c = 0; c < 128; ++c) {
      const uint16_t b = bf16_bits(fp8_e4m3_to_float(uint8_t(c)));
      lo[c] = uint8_t(b), hi[c] = uint8_t(b >> 8);
    }
    lo_[0] = _mm512_load_si512(lo), lo_[1] = _mm512_load_si512(lo + 64);
    hi_[0] = _mm512_load_si512(hi), hi_[1] = _mm512_load_si512(hi + 64);
  }
  // codes[0, n) to dst[0, n) and zeros to dst[n, 64) (n <= 0: all zeros).
  void convert(const uint8_t* codes, int64_t n, uint16_t* dst) const {
    const __m512i v = n >= 64 ? _mm512_loadu_si512(codes)
                              : _mm512_maskz_loadu_epi8(n <= 0 ? __mmask64(0) : (__mmask64(1) << n) - 1, codes);
    const __m512i mag = _mm512_and_si512(v, _mm512_set1_epi8(0x7f));
    const __m512i lo = _mm512_permutex2var_epi8(lo_[0], mag, lo_[1]);
    const __m512i hi = _mm512_or_si512(_mm512_permutex2var_epi8(hi_[0], mag, hi_[1]),
                                       _mm512_and_si512(v, _mm512_set1_epi8(char(0x80))));
    // unpack interleaves within 128-bit lanes: elements 0-7, 16-23, ... and 8-15, 24-31, ...
    const __m512i a = _mm512_unpacklo_epi8(lo, hi), b = _mm512_unpackhi_epi8(lo, hi);
    _mm512_storeu_si512(dst, _mm512_permutex2var_epi64(a, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), b));
    _mm512_storeu_si512(dst + 32, _mm512_permutex2var_epi64(a, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), b));
  }

 private:
  __m512i lo_[2], hi_[2];
};

// e2m1 values (two a byte, low nibble first) times their group scales to bf16 bits, 64 at a time. e2m1 times an
// e4m3 or ue8m0 scale is exact in bf16 (at most 6 significant bits), bar ue8m0 scales below 2^-125 (bf16 denormals).
class Fp4ToBf16 {
 public:
  Fp4ToBf16() {
    alignas(64) float t[16];
    for (int c = 0; c < 16; ++c) t[c] = fp4_e2m1_to_float(uint8_t(c));
    table_ = _mm512_load_ps(t);
  }
  // Values [0, n) (n even) from `packed`, value v times scale16[v / 16], to dst[0, n); zeros to dst[n, 64).
  void convert(const uint8_t* packed, int64_t n, const float* scale16, uint16_t* dst) const {
    const __mmask32 in = n >= 64 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : (__mmask32(1) << (n / 2)) - 1;
    const __m256i raw = n >= 64 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed))
                                : _mm256_maskz_loadu_epi8(in, packed);
    const __m512i bytes = _mm512_cvtepu8_epi16(raw);
    // Byte 2j: byte j's low nibble, byte 2j + 1: its high nibble.
    const __m512i nibbles = _mm512_or_si512(_mm512_and_si512(bytes, _mm512_set1_epi16(0x0f)),
                                            _mm512_slli_epi16(_mm512_srli_epi16(bytes, 4), 8));
    const __m512 v0 = value16(_mm512_maskz_extracti32x4_epi32(kAll4, nibbles, 0), scale16[0]);
    const __m512 v1 = value16(_mm512_maskz_extracti32x4_epi32(kAll4, nibbles, 1), scale16[1]);
    const __m512 v2 = value16(_mm512_maskz_extracti32x4_epi32(kAll4, nibbles, 2), scale16[2]);
    const __m512 v3 = value16(_mm512_maskz_extracti32x4_epi32(kAll4, nibbles, 3), scale16[3]);
    _mm512_storeu_si512(dst, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v1, v0)));
    _mm512_storeu_si512(dst + 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v3, v2)));
  }

 private:
  // (The zero-masked forms with every lane on: the plain ones leave GCC 12 warning on their undefined pass-through.)
  static constexpr __mmask8 kAll4 = 0xf;
  static constexpr __mmask16 kAll16 = 0xffff;
  __m512 value16(__m128i codes, float scale) const {
    const __m512 e2m1 = _mm512_maskz_permutexvar_ps(kAll16, _mm512_maskz_cvtepu8_epi32(kAll16, codes), table_);
    return _mm512_mul_ps(e2m1, _mm512_set1_ps(scale));
  }
  __m512 table_;
};

// Converts 64-k chunks of e4m3 or fp4 weight rows [n0, n0 + nn) of expert e to bf16 rows of a [16][64] chunk, zeros
// past the rows' end, prefetching each row a few chunks ahead: their vector loads alone keep too few lines in flight
// (e4m3: 1.35x slower at 16 tokens).
class ChunkConverter {
 public:
  ChunkConverter(const ExpertMatrix& W, int64_t e, int64_t n0, int64_t nn) : W_(W), e_(e), n0_(n0), nn_(nn) {}

  void operator()(int64_t k, uint16_t* chunk) const {
    if (!scheme_is_fp4(W_.scheme)) {
      for (int64_t i = 0; i < nn_; ++i) {
        const uint8_t* row = W_.row(e_, n0_ + i);
        _mm_prefetch(reinterpret_cast<const char*>(row + k + kPrefetchBytes), _MM_HINT_T0);
        e4m3_.convert(row + k, W_.cols - k, chunk + i * kChunkK);
      }
      return;
    }
    // The chunk's four 16-value slices' groups; past the row, scale 0.
    const int64_t group = W_.group_size(), groups = W_.cols / group;
    int64_t g[4];
    for (int q = 0; q < 4; ++q) g[q] = (k + 16 * q) / group < groups ? (k + 16 * q) / group : -1;
    const float* decode = scale_codes_[W_.scheme == QuantScheme::nvfp4 ? 0 : 1].data();
    for (int64_t i = 0; i < nn_; ++i) {
      const uint8_t* row = W_.row(e_, n0_ + i);
      _mm_prefetch(reinterpret_cast<const char*>(row + k / 2 + kPrefetchBytes), _MM_HINT_T0);
      const uint8_t* gs = W_.group_scales(e_, n0_ + i);
      float scale16[4];
      for (int q = 0; q < 4; ++q) scale16[q] = g[q] >= 0 ? decode[gs[g[q]]] : 0.0f;
      fp4_.convert(row + k / 2, W_.cols - k, scale16, chunk + i * kChunkK);
    }
  }

 private:
  static inline const E4m3ToBf16 e4m3_;
  static inline const Fp4ToBf16 fp4_;
  static inline const std::array<std::array<float, 256>, 2> scale_codes_ = [] {  // e4m3 (nvfp4), ue8m0 (mxfp4)
    std::array<std::array<float, 256>, 2> t;
    for (int c = 0; c < 256; ++c) t[0][c] = fp8_e4m3_to_float(uint8_t(c)), t[1][c] = ue8m0_to_float(uint8_t(c));
    return t;
  }();
  const ExpertMatrix& W_;
  int64_t e_, n0_, nn_;
};

// bf16 weight rows [n0, n0 + nn) of expert e as rows of K32, zeros past K and past nn rows (the tiles at the matrix's
// ends).
void weight_block_bf16(const ExpertMatrix& W, int64_t e, int64_t n0, int64_t nn, int64_t K32, uint16_t* dst) {
  const int64_t K = W.cols;
  for (int64_t i = 0; i < nn; ++i) {
    std::memcpy(dst + i * K32, W.row(e, n0 + i), static_cast<size_t>(K) * 2);
    std::fill(dst + i * K32 + K, dst + (i + 1) * K32, uint16_t{0});
  }
  std::fill(dst + nn * K32, dst + kTileRows * K32, uint16_t{0});
}

struct Item {
  int64_t expert, first_tile, tiles, first_row, rows, col_begin, col_end;
};

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
// Tiles 0-3: C; 4: weights (16 rows x 32 bf16); 5, 6: packed activations (16 k pairs x 16 rows x 2 bf16).
constexpr TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16}};

template <int NT>
void zero_c() {
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (NT > 2) _tile_zero(2);
  if constexpr (NT > 3) _tile_zero(3);
}

template <int NT>
void store_c(float (*c)[kTileRows][kTileRows]) {
  _tile_stored(0, c[0], 64);
  if constexpr (NT > 1) _tile_stored(1, c[1], 64);
  if constexpr (NT > 2) _tile_stored(2, c[2], 64);
  if constexpr (NT > 3) _tile_stored(3, c[3], 64);
}

// C_j += (weight tile 4) . B_j for the packed activation tiles' k step at k.
template <int NT>
void dot_tiles(const uint16_t* const* b, int64_t k) {
  _tile_loadd(5, b[0] + k * kTileRows, 64);
  _tile_dpbf16ps(0, 4, 5);
  if constexpr (NT > 1) {
    _tile_loadd(6, b[1] + k * kTileRows, 64);
    _tile_dpbf16ps(1, 4, 6);
  }
  if constexpr (NT > 2) {
    _tile_loadd(5, b[2] + k * kTileRows, 64);
    _tile_dpbf16ps(2, 4, 5);
  }
  if constexpr (NT > 3) {
    _tile_loadd(6, b[3] + k * kTileRows, 64);
    _tile_dpbf16ps(3, 4, 6);
  }
}

// C_j += W[16 rows][k0, k1) . B_j in steps of 32, the weight tiles read from bf16 rows (w, w_stride).
template <int NT>
void dot_steps(const uint8_t* w, int64_t w_stride, const uint16_t* const* b, int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; k += kTileK) {
    _tile_loadd(4, w + k * 2, w_stride);
    dot_tiles<NT>(b, k);
  }
}

// The same for e4m3 or fp4 weight rows, converted 64 k at a time into `chunk` ([16][64] bf16, rows past nn zero)
// just before their tiles load, so that the conversion stays in L1.
template <int NT>
void dot_steps_converted(const ChunkConverter& convert, const uint16_t* const* b, int64_t k0, int64_t k1,
                         uint16_t* chunk) {
  for (int64_t k = k0; k < k1; k += kChunkK) {
    convert(k, chunk);
    for (int64_t step = k; step < std::min(k1, k + kChunkK); step += kTileK) {
      _tile_loadd(4, chunk + (step - k), kChunkK * sizeof(uint16_t));
      dot_tiles<NT>(b, step);
    }
  }
}

struct GemmArgs {
  const ExpertMatrix& W;
  const float* A_scales;
  int64_t a_scale_cols, K32;
  const uint16_t* packed;
  float* out;
  const int64_t* dst_row;
};

// Activation row m of the stored C tiles: the 16 weight rows' sums, c[m / 16][i][m % 16] for i < 16.
__m512 c_column(const float (*c)[kTileRows][kTileRows], int64_t m) {
  const __m512i rows = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 16, 0);
  const __m512i at = _mm512_add_epi32(rows, _mm512_set1_epi32(int(m % kTileRows)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16(0xffff), at, c[m / kTileRows][0], 4);
}

// 16 per-weight-row values f(i) for i < nn, zeros past nn.
template <class F>
__m512 per_weight_row(int64_t nn, F f) {
  alignas(64) float v[kTileRows] = {};
  for (int64_t i = 0; i < nn; ++i) v[i] = f(i);
  return _mm512_load_ps(v);
}

template <int NT>
void run_item(const GemmArgs& g, const Item& it, std::vector<uint16_t>& wbuf) {
  const ExpertMatrix& W = g.W;
  const int64_t K = W.cols, N = W.rows, K32 = g.K32, e = it.expert;
  const ScaleMode mode = scale_mode(W.scheme);
  const uint16_t* b[kMaxTiles];
  for (int j = 0; j < NT; ++j) b[j] = g.packed + (it.first_tile + j) * K32 * kTileRows;
  alignas(64) float c[kMaxTiles][kTileRows][kTileRows];  // [tile][weight row][activation row]
  __m512 acc[kMaxTiles * kTileRows];                     // per activation row, the 16 weight rows
  alignas(64) uint16_t chunk[kTileRows * kChunkK];       // converted weights' k chunk
  _tile_loadconfig(&kTileConfig);
  for (int64_t n0 = it.col_begin; n0 < it.col_end; n0 += kTileRows) {
    const int64_t nn = std::min(kTileRows, N - n0);
    const __mmask16 lanes = __mmask16((1u << nn) - 1u);
    // The weight tiles: bf16 rows where they lie, or a zero-padded copy at the matrix's ends; e4m3 and fp4 rows
    // converted chunk by chunk.
    const bool converted = W.scheme != QuantScheme::bf16;
    const uint8_t* w = nullptr;
    int64_t w_stride = 0;
    if (converted) {
      if (nn < kTileRows) std::fill(chunk + nn * kChunkK, chunk + kTileRows * kChunkK, uint16_t{0});
    } else if (nn == kTileRows && K == K32) {
      w = W.row(e, n0), w_stride = W.row_bytes;
    } else {
      weight_block_bf16(W, e, n0, nn, K32, wbuf.data());
      w = reinterpret_cast<const uint8_t*>(wbuf.data()), w_stride = K32 * 2;
    }
    const ChunkConverter convert(W, e, n0, nn);
    const auto dot = [&](int64_t k0, int64_t k1) {
      if (converted) dot_steps_converted<NT>(convert, b, k0, k1, chunk);
      else dot_steps<NT>(w, w_stride, b, k0, k1);
    };
    if (mode == ScaleMode::per_block) {
      for (int64_t m = 0; m < it.rows; ++m) acc[m] = _mm512_setzero_ps();
      for (int64_t grp = 0, k0 = 0; k0 < K; ++grp, k0 += kFp8BlockSize) {
        zero_c<NT>();
        dot(k0, std::min(K32, k0 + kFp8BlockSize));
        store_c<NT>(c);
        const __m512 w_scale = per_weight_row(nn, [&](int64_t i) { return W.block_scales(e, n0 + i)[grp]; });
        for (int64_t m = 0; m < it.rows; ++m) {
          const __m512 a_scale = _mm512_set1_ps(g.A_scales[(it.first_row + m) * g.a_scale_cols + grp]);
          acc[m] = _mm512_add_ps(acc[m], _mm512_mul_ps(_mm512_mul_ps(c_column(c, m), a_scale), w_scale));
        }
      }
    } else {
      zero_c<NT>();
      dot(0, K32);
      store_c<NT>(c);
      for (int64_t m = 0; m < it.rows; ++m) acc[m] = c_column(c, m);
      if (W.scheme == QuantScheme::nvfp4) {  // the global scale, kept out of the bf16 weights
        const __m512 global = _mm512_set1_ps(W.global_scale[e]);
        for (int64_t m = 0; m < it.rows; ++m) acc[m] = _mm512_mul_ps(acc[m], global);
      }
      if (mode == ScaleMode::per_row) {
        const __m512 w_scale = per_weight_row(nn, [&](int64_t i) { return W.row_scale(e, n0 + i); });
        for (int64_t m = 0; m < it.rows; ++m)
          acc[m] = _mm512_mul_ps(_mm512_mul_ps(acc[m], _mm512_set1_ps(g.A_scales[it.first_row + m])), w_scale);
      }
    }
    const __m512 bias = per_weight_row(nn, [&](int64_t i) { return W.bias ? W.bias[e * N + n0 + i] : 0.0f; });
    for (int64_t m = 0; m < it.rows; ++m) {
      const int64_t r = it.first_row + m;
      float* dst = g.out + (g.dst_row ? g.dst_row[r] : r) * N + n0;
      _mm512_mask_storeu_ps(dst, lanes, W.bias ? _mm512_add_ps(acc[m], bias) : acc[m]);
    }
  }
  _tile_release();
}
#endif

}  // namespace

bool supported() {
  static const bool granted = request_tile_state();
  return granted;
}

bool enabled() {
  const char* env = std::getenv("FUSEDMOE_CPU_AMX");
  return !(env && std::strcmp(env, "0") == 0) && supported();
}

double peak_loop(int64_t iters) {
  FMOE_CHECK(enabled(), "the AMX peak loop needs AMX (amx::enabled())");
#if FUSEDMOE_HAVE_AMX
  alignas(64) static const uint16_t zeros[kTileRows * kTileK] = {};
  _tile_loadconfig(&kTileConfig);
  zero_c<4>();
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  for (int64_t it = 0; it < iters; ++it) {
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 5);
    _tile_dpbf16ps(2, 4, 5);
    _tile_dpbf16ps(3, 4, 5);
  }
  _tile_release();
#endif
  return double(iters) * 4 * kTileRows * kTileRows * kTileK * 2;
}

size_t packed_bytes(int64_t rows, int64_t experts, int64_t cols) {
  if (!supported()) return 0;
  return static_cast<size_t>(packed_tiles(rows, experts) * round_up(cols, kTileK) * kTileRows) * sizeof(uint16_t);
}

void grouped_gemm(const ExpertMatrix& W, const float* A, const float* A_scales, int64_t a_scale_cols,
                  const int64_t* offsets, int64_t num_experts, float* out, const int64_t* dst_row, void* packed) {
  FMOE_CHECK(enabled(), "the AMX GEMM needs AMX (amx::enabled())");
#if FUSEDMOE_HAVE_AMX
  const int64_t K = W.cols, K32 = round_up(K, kTileK);
  uint16_t* pk = static_cast<uint16_t*>(packed);
  // Each expert's rows in tiles of 16; items of up to four tiles and 64 weight rows.
  std::vector<int64_t> first_tile(static_cast<size_t>(num_experts) + 1, 0);
  std::vector<Item> items;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e], tiles = (rows + kTileRows - 1) / kTileRows;
    first_tile[e + 1] = first_tile[e] + tiles;
    for (int64_t t = 0; t < tiles; t += kMaxTiles)
      for (int64_t n = 0; n < W.rows; n += kColBlock) {
        const int64_t r0 = offsets[e] + t * kTileRows;
        items.push_back({e, first_tile[e] + t, std::min<int64_t>(kMaxTiles, tiles - t), r0,
                         std::min(offsets[e + 1] - r0, kMaxTiles * kTileRows), n, std::min(n + kColBlock, W.rows)});
      }
  }
  parallel_for(first_tile[num_experts], [&](int64_t t) {
    const int64_t e = std::upper_bound(first_tile.begin(), first_tile.end(), t) - first_tile.begin() - 1;
    const int64_t r0 = offsets[e] + (t - first_tile[e]) * kTileRows;
    pack_tile(A, K, K32, r0, std::min(kTileRows, offsets[e + 1] - r0), pk + t * K32 * kTileRows);
  });
  const GemmArgs args{W, A_scales, a_scale_cols, K32, pk, out, dst_row};
  parallel_for(static_cast<int64_t>(items.size()), [&](int64_t index) {
    thread_local std::vector<uint16_t> wbuf;
    wbuf.resize(static_cast<size_t>(kTileRows * K32));
    const Item& it = items[index];
    switch (it.tiles) {
      case 1: run_item<1>(args, it, wbuf); break;
      case 2: run_item<2>(args, it, wbuf); break;
      case 3: run_item<3>(args, it, wbuf); break;
      default: run_item<4>(args, it, wbuf); break;
    }
  });
#else
  (void)W, (void)A, (void)A_scales, (void)a_scale_cols, (void)offsets, (void)num_experts, (void)out, (void)dst_row,
      (void)packed;
#endif
}

}  // namespace fusedmoe::cpu::amx
