// bfloat16 products with float32 accumulation on AVX512_BF16 (see bf16_gemm.h): packing and a
// register-tiled kernel of kTileRows × kPanelCols outputs (24 accumulators of 16 floats), whose
// inner loop loads two vectors of the right operand's panel, broadcasts one word of the left
// operand per row and issues two vdpbf16ps per row.
#include "bf16_gemm.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "isa.h"

#ifdef HEAT_FAST_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace heat_fast::cpu::bf16 {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// At most this many pairs per block of the inner dimension: a block of a right panel is at most
// 32 KiB, to stay in the L1 cache; the blocks of one product are of equal length.
constexpr int64_t kMaxBlockPairs = 256;

uint32_t bits(c10::BFloat16 v) { return v.x; }
uint32_t bits(float v) { return c10::BFloat16(v).x; }  // nearest even

#ifdef HEAT_FAST_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
// GCC 12's own intrinsics headers initialise their "undefined" vectors as `__Y = __Y`, which
// -Wmaybe-uninitialized reports wherever they are inlined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

__mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// The first `lanes` (≤ 16) of 16 consecutive values from p as bf16 bit patterns, zero-extended
// to 32 bits (zero beyond `lanes`).
__m512i widened(const float* p, __mmask16 lanes) {
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lanes, p)));
}
__m512i widened(const c10::BFloat16* p, __mmask16 lanes) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, p));
}

// Words (src[r][c], src[r + 1][c]) for the first `lanes` of 16 consecutive columns c (rows r and
// r + 1 given; no second row: zero high halves).
template <typename T>
__m512i row_pair_words(const T* row, const T* next, __mmask16 lanes) {
  const __m512i low = widened(row, lanes);
  return next == nullptr ? low : _mm512_or_si512(low, _mm512_slli_epi32(widened(next, lanes), 16));
}

// Words (src[i][2kp], src[i][2kp + 1]) for 16 consecutive kp of one row i.
__m512i column_pair_words(const float* row) {
  const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 16), _mm512_loadu_ps(row));
  return (__m512i)both;
}
__m512i column_pair_words(const c10::BFloat16* row) {
  return _mm512_loadu_si512(row);
}

template <typename T>
void pack_along_rows(const T* src, int64_t ld, int64_t outer, int64_t inner, int64_t width,
                     uint32_t* out, int64_t pairs) {
  const int64_t panels = ceil_div(outer, width);
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t first = p * width;
    const int64_t lanes = std::min(width, outer - first);
    for (int64_t kp = 0; kp < pairs; ++kp) {
      uint32_t* dst = out + (p * pairs + kp) * width;
      const T* row = src + 2 * kp * ld + first;
      const T* next = 2 * kp + 1 < inner ? row + ld : nullptr;
      for (int64_t lane = 0; lane < width; lane += 16) {
        const __mmask16 valid = first_lanes(lanes - lane);
        const __m512i words = row_pair_words(row + lane, next == nullptr ? nullptr : next + lane,
                                             valid);
        _mm512_mask_storeu_epi32(dst + lane, first_lanes(width - lane), words);
      }
    }
  }
}

template <typename T>
void pack_along_columns(const T* src, int64_t ld, int64_t outer, int64_t inner, int64_t width,
                        uint32_t* out, int64_t pairs) {
  const int64_t panels = ceil_div(outer, width);
  const int64_t whole = inner / 32;  // 16 words of pairs at a time
  alignas(64) uint32_t words[16];
  for (int64_t p = 0; p < panels; ++p) {
    uint32_t* panel = out + p * pairs * width;
    for (int64_t lane = 0; lane < width; ++lane) {
      const int64_t i = p * width + lane;
      if (i >= outer) {
        for (int64_t kp = 0; kp < pairs; ++kp) panel[kp * width + lane] = 0;
        continue;
      }
      const T* row = src + i * ld;
      for (int64_t block = 0; block < whole; ++block) {
        _mm512_store_si512(words, column_pair_words(row + block * 32));
        for (int w = 0; w < 16; ++w) panel[(block * 16 + w) * width + lane] = words[w];
      }
      for (int64_t kp = whole * 16; kp < pairs; ++kp) {
        const int64_t k = 2 * kp;
        panel[kp * width + lane] = bits(row[k]) | (k + 1 < inner ? bits(row[k + 1]) << 16 : 0u);
      }
    }
  }
}

// out[r][c] (+)= Σ_kp A[r][kp] · b[kp · kPanelCols + c] for r < rows, c < cols, with A[r][kp] at
// a[r · stride + kp] (kInPlace) or a[kp · stride + r]; the operands hold kTileRows rows and
// kPanelCols columns (zero beyond rows and cols where packed).
template <bool kInPlace>
void tile(int64_t pairs, const uint32_t* a, int64_t stride, const uint32_t* b, float* out,
          int64_t ldo, int64_t rows, int64_t cols, bool accumulate) {
  constexpr int R = kTileRows;
  const __mmask16 low = first_lanes(cols), high = first_lanes(cols - 16);
  __m512 acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const bool load = accumulate && r < rows;
    acc[r][0] = load ? _mm512_maskz_loadu_ps(low, out + r * ldo) : _mm512_setzero_ps();
    acc[r][1] = load ? _mm512_maskz_loadu_ps(high, out + r * ldo + 16) : _mm512_setzero_ps();
  }
  for (int64_t kp = 0; kp < pairs; ++kp) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kp * kPanelCols);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kp * kPanelCols + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint32_t word = kInPlace ? a[r * stride + kp] : a[kp * stride + r];
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(word));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
  for (int r = 0; r < R && r < rows; ++r) {
    _mm512_mask_storeu_ps(out + r * ldo, low, acc[r][0]);
    _mm512_mask_storeu_ps(out + r * ldo + 16, high, acc[r][1]);
  }
}

void gemm_avx512(const Left& a, const Packed& b, float* out, int64_t ldo, bool accumulate) {
  const int64_t tiles = ceil_div(a.outer, kTileRows);
  const int64_t panels = ceil_div(b.outer, kPanelCols);
  // The rows of a last, partial tile read in place, packed with zeros below them.
  std::vector<uint32_t> tail;
  const int64_t tail_rows = a.outer % kTileRows;
  if (a.in_place && tail_rows != 0) {
    tail.assign(a.pairs * kTileRows, 0u);
    const uint32_t* first = a.words + (tiles - 1) * a.tile_stride;
    for (int64_t r = 0; r < tail_rows; ++r) {
      for (int64_t kp = 0; kp < a.pairs; ++kp) tail[kp * kTileRows + r] = first[r * a.stride + kp];
    }
  }
  // Blocks of the inner dimension, so that a block of a right panel stays in the L1 cache while
  // every tile of the left operand passes it; the accumulators go through out between blocks,
  // in float32, so the sums are those of one unblocked pass.
  const int64_t block_pairs = ceil_div(a.pairs, ceil_div(a.pairs, kMaxBlockPairs));
  for (int64_t k0 = 0; k0 < a.pairs; k0 += block_pairs) {
    const int64_t pairs = std::min(block_pairs, a.pairs - k0);
    const bool add = accumulate || k0 > 0;
    for (int64_t p = 0; p < panels; ++p) {
      const uint32_t* b_panel = b.panel(p) + k0 * kPanelCols;
      const int64_t cols = std::min(kPanelCols, b.outer - p * kPanelCols);
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t rows = std::min(kTileRows, a.outer - t * kTileRows);
        float* o = out + t * kTileRows * ldo + p * kPanelCols;
        if (a.in_place && rows == kTileRows) {
          tile<true>(pairs, a.words + t * a.tile_stride + k0, a.stride, b_panel, o, ldo, rows,
                     cols, add);
        } else if (a.in_place) {
          tile<false>(pairs, tail.data() + k0 * kTileRows, kTileRows, b_panel, o, ldo, rows, cols,
                      add);
        } else {
          tile<false>(pairs, a.words + t * a.tile_stride + k0 * a.stride, a.stride, b_panel, o,
                      ldo, rows, cols, add);
        }
      }
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // HEAT_FAST_AVX2_KERNELS

}  // namespace

bool available() {
#ifdef HEAT_FAST_AVX2_KERNELS
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }();
  return supported && cpu_isa() == Isa::kAvx512;
#else
  return false;
#endif
}

template <typename T>
void pack(const T* src, int64_t ld, bool along_rows, int64_t outer, int64_t inner, int64_t width,
          Packed& out) {
  TORCH_CHECK(available(), "heat_fast: bf16 products need a CPU with AVX512_BF16");
  out.outer = outer;
  out.pairs = ceil_div(inner, 2);
  out.width = width;
  out.words.resize(ceil_div(outer, width) * out.panel_words());
#ifdef HEAT_FAST_AVX2_KERNELS
  if (along_rows) {
    pack_along_rows(src, ld, outer, inner, width, out.words.data(), out.pairs);
  } else {
    pack_along_columns(src, ld, outer, inner, width, out.words.data(), out.pairs);
  }
#endif
}

template void pack<float>(const float*, int64_t, bool, int64_t, int64_t, int64_t, Packed&);
template void pack<c10::BFloat16>(const c10::BFloat16*, int64_t, bool, int64_t, int64_t, int64_t,
                                  Packed&);

Left Left::packed(const Packed& p) {
  TORCH_CHECK(p.width % kTileRows == 0, "heat_fast: a left bf16 operand packed ", p.width,
              " wide");
  const bool panelled = p.width == kTileRows;
  return {p.words.data(), p.outer, p.pairs, false, p.width,
          panelled ? p.panel_words() : kTileRows};
}

Left Left::rows(const c10::BFloat16* a, int64_t ld, int64_t rows, int64_t inner) {
  TORCH_CHECK(ld % 2 == 0 && inner % 2 == 0, "heat_fast: bf16 rows read in place need an even ",
              "row stride and inner size, got ", ld, ", ", inner);
  return {reinterpret_cast<const uint32_t*>(a), rows, inner / 2, true, ld / 2,
          kTileRows * ld / 2};
}

void gemm(const Left& a, const Packed& b, float* out, int64_t ldo, bool accumulate) {
  TORCH_CHECK(available(), "heat_fast: bf16 products need a CPU with AVX512_BF16");
  TORCH_CHECK(a.pairs == b.pairs && b.width == kPanelCols, "heat_fast: bf16 gemm operands of ",
              a.pairs, " and ", b.pairs, " pairs, right one packed ", b.width, " wide");
#ifdef HEAT_FAST_AVX2_KERNELS
  gemm_avx512(a, b, out, ldo, accumulate);
#endif
}

}  // namespace heat_fast::cpu::bf16
