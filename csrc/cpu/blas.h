// Row-major matrix products on raw pointers for the CPU kernels: each task's products write
// straight into its slice of an output or into a task-local buffer, with no tensor views or
// allocations around them beyond the thin wrappers handed to at::mm_out.
#pragma once

#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <array>
#include <cstdint>

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

// out (rows × cols, row stride ldo) = a (rows × inner) · b (inner × cols). Callers run below
// autograd.
template <typename T>
void matmul(RowMajor<T> a, RowMajor<T> b, T* out, int64_t ldo, int64_t rows, int64_t cols,
            int64_t inner) {
  at::Tensor result = as_tensor<T>({out, ldo}, rows, cols);
  at::mm_out(result, as_tensor(a, rows, inner), as_tensor(b, inner, cols));
}

}  // namespace heat_fast::cpu
