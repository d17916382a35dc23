// Register-tiled matrix products for the small GEMMs of the CPU kernels (a classification
// head: 128 × 640 × 10), where BLAS spends more on per-call set-up and packing than on the
// arithmetic. Compiled for the widest vector instructions this CPU has (AVX-512, AVX2 + FMA
// or the baseline); results depend on the instruction set but never on how callers block
// the work or on the thread count. T is float or double.
#pragma once

#include <cstdint>

namespace heat_fast::cpu {

// out (rows × cols, row stride ldo) = a (rows × inner) · bᵀ, with a and b (cols × inner)
// row-major (row strides lda, ldb); when row_squares is not null, also row_squares[r] =
// Σ_k a[r, k]² (a's squared row norms, in the same pass over a).
template <typename T>
void small_dots(const T* a, int64_t lda, const T* b, int64_t ldb, T* out, int64_t ldo,
                int64_t rows, int64_t cols, int64_t inner, T* row_squares = nullptr);

// The rows of a row-major matrix m (row stride ld), row r scaled by scales[r]: a term
// diag(scales) · m added to a product; none when scales is null.
template <typename T>
struct ScaledRows {
  const T* scales = nullptr;
  const T* m = nullptr;
  int64_t ld = 0;

  // The same term for the rows from `row` on and the columns from `col` on.
  ScaledRows at(int64_t row, int64_t col) const {
    return scales == nullptr ? *this : ScaledRows{scales + row, m + row * ld + col, ld};
  }
};

// out (rows × cols, row stride ldo) = a (rows × inner) · b (inner × cols) + term, with a[r, k]
// at a + r · a_row + k · a_inner (row-major or transposed) and b row-major (row stride ldb).
template <typename T>
void small_axpys(const T* a, int64_t a_row, int64_t a_inner, const T* b, int64_t ldb, T* out,
                 int64_t ldo, int64_t rows, int64_t cols, int64_t inner,
                 ScaledRows<T> term = {});

}  // namespace heat_fast::cpu
