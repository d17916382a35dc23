// The instruction-set variants of small_gemm_kernels.inc and the run-time choice among them
// (isa.h).
#include "small_gemm.h"

#include "isa.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace heat_fast::cpu {
namespace {

// Tiles sized to the register file: R × C dot accumulators plus R + C operand vectors, and
// R × V axpy accumulators plus V operand vectors (32 registers with AVX-512, 16 below).
#define HEAT_FAST_DOT_TILE_ROWS 2
#define HEAT_FAST_DOT_TILE_COLS 4
#define HEAT_FAST_AXPY_TILE_ROWS 4
#define HEAT_FAST_AXPY_TILE_VECTORS 2

#define HEAT_FAST_VECTOR_BYTES 16
namespace vec128 {
#include "small_gemm_kernels.inc"
}  // namespace vec128
#undef HEAT_FAST_VECTOR_BYTES

#ifdef HEAT_FAST_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define HEAT_FAST_VECTOR_BYTES 32
namespace vec256 {
#include "small_gemm_kernels.inc"
}  // namespace vec256
#undef HEAT_FAST_VECTOR_BYTES
#pragma GCC pop_options

#undef HEAT_FAST_DOT_TILE_ROWS
#undef HEAT_FAST_DOT_TILE_COLS
#undef HEAT_FAST_AXPY_TILE_ROWS
#undef HEAT_FAST_AXPY_TILE_VECTORS
#define HEAT_FAST_DOT_TILE_ROWS 4
#define HEAT_FAST_DOT_TILE_COLS 5
#define HEAT_FAST_AXPY_TILE_ROWS 6
#define HEAT_FAST_AXPY_TILE_VECTORS 4

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define HEAT_FAST_VECTOR_BYTES 64
namespace vec512 {
#include "small_gemm_kernels.inc"
}  // namespace vec512
#undef HEAT_FAST_VECTOR_BYTES
#pragma GCC pop_options
#endif

}  // namespace

template <typename T>
void small_dots(const T* a, int64_t lda, const T* b, int64_t ldb, T* out, int64_t ldo,
                int64_t rows, int64_t cols, int64_t inner, T* row_squares) {
  switch (cpu_isa()) {
#ifdef HEAT_FAST_AVX2_KERNELS
    case Isa::kAvx512:
      return vec512::dots(a, lda, b, ldb, out, ldo, rows, cols, inner, row_squares);
    case Isa::kAvx2:
      return vec256::dots(a, lda, b, ldb, out, ldo, rows, cols, inner, row_squares);
#endif
    default: return vec128::dots(a, lda, b, ldb, out, ldo, rows, cols, inner, row_squares);
  }
}

template <typename T>
void small_axpys(const T* a, int64_t a_row, int64_t a_inner, const T* b, int64_t ldb, T* out,
                 int64_t ldo, int64_t rows, int64_t cols, int64_t inner, ScaledRows<T> term) {
  switch (cpu_isa()) {
#ifdef HEAT_FAST_AVX2_KERNELS
    case Isa::kAvx512:
      return vec512::axpys(a, a_row, a_inner, b, ldb, out, ldo, rows, cols, inner, term);
    case Isa::kAvx2:
      return vec256::axpys(a, a_row, a_inner, b, ldb, out, ldo, rows, cols, inner, term);
#endif
    default: return vec128::axpys(a, a_row, a_inner, b, ldb, out, ldo, rows, cols, inner, term);
  }
}

template void small_dots<float>(const float*, int64_t, const float*, int64_t, float*, int64_t,
                                int64_t, int64_t, int64_t, float*);
template void small_dots<double>(const double*, int64_t, const double*, int64_t, double*,
                                 int64_t, int64_t, int64_t, int64_t, double*);
template void small_axpys<float>(const float*, int64_t, int64_t, const float*, int64_t, float*,
                                 int64_t, int64_t, int64_t, int64_t, ScaledRows<float>);
template void small_axpys<double>(const double*, int64_t, int64_t, const double*, int64_t,
                                  double*, int64_t, int64_t, int64_t, int64_t,
                                  ScaledRows<double>);

}  // namespace heat_fast::cpu
