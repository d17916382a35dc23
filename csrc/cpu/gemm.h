// Matrix products on the CPU whose results do not depend on the thread count.
//
// BLAS libraries split the inner dimension across threads for some shapes, which changes the
// summation order with torch.set_num_threads. Two ways around it, both deterministic:
//  - split_mm_out (large products): the output is cut into shape-determined blocks of rows
//    (or of columns when it has fewer rows than columns); each block is one at::mm_out over
//    the whole inner dimension, run by one thread inside an OpenMP parallel region, where the
//    BLAS call is sequential;
//  - run_pair (small products): two independent tasks run concurrently, one per thread, so
//    the BLAS calls inside each task are sequential and the two cores stay busy.
// Callers run below autograd (at::AutoDispatchBelowADInplaceOrView); the workers do too.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>

#include <algorithm>

namespace heat_fast::cpu {

// Below this many multiply-adds a pass's products take the run_pair route.
constexpr int64_t kSmallProduct = int64_t(1) << 24;

inline bool is_small_product(int64_t rows, int64_t cols, int64_t inner) {
  return rows * cols * inner < kSmallProduct;
}

// first() and second() on two threads when torch has more than one, else one after the other.
template <typename First, typename Second>
void run_pair(const First& first, const Second& second) {
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // thread-local: set per worker
    for (int64_t task = begin; task < end; ++task) {
      if (task == 0) {
        first();
      } else {
        second();
      }
    }
  });
}

// out = a · b (out: rows × cols, written through its strides) for large products.
inline void split_mm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  constexpr int64_t kMaxBlock = 128;
  const bool by_rows = out.size(0) >= out.size(1);
  const int64_t extent = by_rows ? out.size(0) : out.size(1);
  const int64_t block = std::max<int64_t>(1, std::min(kMaxBlock, (extent + 1) / 2));
  const int64_t blocks = (extent + block - 1) / block;
  at::parallel_for(0, std::max<int64_t>(blocks, 2), 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t i = begin; i < std::min(end, blocks); ++i) {
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
}

}  // namespace heat_fast::cpu
