// A CPU matrix product whose result does not depend on the thread count.
//
// BLAS libraries split the inner dimension across threads for some shapes, which changes the
// summation order with torch.set_num_threads. Here the output is cut into a shape-determined
// set of blocks (rows, or columns when the output has fewer rows than columns), and each
// block is one at::mm_out over the whole inner dimension run by one thread: inside an OpenMP
// parallel region the BLAS call is sequential, and with one thread it is sequential anyway.
// Callers run below autograd (at::AutoDispatchBelowADInplaceOrView), as the workers do.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>

namespace heat_fast::cpu {

inline at::Tensor deterministic_mm(const at::Tensor& a, const at::Tensor& b) {
  constexpr int64_t kMaxBlock = 128;
  const int64_t rows = a.size(0);
  const int64_t cols = b.size(1);
  at::Tensor out = at::empty({rows, cols}, a.options());
  const bool by_rows = rows >= cols;
  const int64_t extent = by_rows ? rows : cols;
  if (extent < 2) {
    return at::mm_out(out, a, b);
  }
  const int64_t block = std::min(kMaxBlock, (extent + 1) / 2);  // at least two blocks
  const int64_t blocks = (extent + block - 1) / block;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: set per worker
    for (int64_t i = begin; i < end; ++i) {
      const int64_t start = i * block;
      const int64_t length = std::min(block, extent - start);
      if (by_rows) {
        at::Tensor part = out.narrow(0, start, length);
        at::mm_out(part, a.narrow(0, start, length), b);
      } else {
        at::Tensor part = out.narrow(1, start, length);
        at::mm_out(part, a, b.narrow(1, start, length));
      }
    }
  });
  return out;
}

}  // namespace heat_fast::cpu
