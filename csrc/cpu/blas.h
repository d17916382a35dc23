// Row-major matrix products on raw pointers for the CPU kernels: each task's products write
// straight into its slice of an output or into a task-local buffer. Small products run on the
// register-tiled kernels of small_gemm.h, larger ones on torch's BLAS through thin tensor
// wrappers handed to at::mm_out.
#pragma once

#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <array>
#include <cstdint>

#include "small_gemm.h"

namespace heat_fast::cpu {

// A matrix in row-major storage: element (r, c) at data[r · ld + c], or at data[c · ld + r]
// when `transposed` (the matrix is the transpose of the one stored).
template <typename T>
struct RowMajor {
  const T* data;
  int64_t ld;
  bool transposed = false;
};

// The (rows × cols) tensor view of m, without a copy.
template <typename T>
at::Tensor as_tensor(RowMajor<T> m, int64_t rows, int64_t cols) {
  const std::array<int64_t, 2> strides = m.transposed ? std::array<int64_t, 2>{1, m.ld}
                                                     : std::array<int64_t, 2>{m.ld, 1};
  return at::from_blob(const_cast<T*>(m.data), {rows, cols}, strides,
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Products of at most this many multiply-adds run on the register-tiled kernels of
// small_gemm.h: at the sizes of a classification head with few classes BLAS spends more on
// set-up and packing than on the arithmetic. Measured on a 2-core AVX-512 VM against MKL,
// per HE-loss op: forward 12%, backward 8% faster at B128 D640 C10 (products of 0.4 M);
// slower from about 3 M up where the operands no longer fit in the core's caches.
constexpr int64_t kSmallProductMacs = int64_t(1) << 21;

inline bool small_product(int64_t rows, int64_t cols, int64_t inner) {
  return rows * cols * inner <= kSmallProductMacs;
}

// out (rows × cols, row stride ldo) = a (rows × inner) · b (inner × cols). Callers run below
// autograd.
template <typename T>
void matmul(RowMajor<T> a, RowMajor<T> b, T* out, int64_t ldo, int64_t rows, int64_t cols,
            int64_t inner) {
  if (small_product(rows, cols, inner)) {
    if (!b.transposed) {
      return small_axpys(a.data, a.transposed ? 1 : a.ld, a.transposed ? a.ld : 1, b.data, b.ld,
                         out, ldo, rows, cols, inner);
    }
    if (!a.transposed) {
      return small_dots(a.data, a.ld, b.data, b.ld, out, ldo, rows, cols, inner);
    }
  }
  at::Tensor result = as_tensor<T>({out, ldo}, rows, cols);
  at::mm_out(result, as_tensor(a, rows, inner), as_tensor(b, inner, cols));
}

}  // namespace heat_fast::cpu
