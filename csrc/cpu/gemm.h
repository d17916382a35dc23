// Matrix products on the CPU whose results do not depend on the thread count.
//
// BLAS libraries split the inner dimension across threads for some shapes, which changes the
// summation order with torch.set_num_threads. Two ways around it, both deterministic:
//  - split_mm_out (large products): the output is cut into shape-determined blocks of rows
//    (or of columns when it has fewer rows than columns); each block is one at::mm_out over
//    the whole inner dimension, run by one thread inside an OpenMP parallel region;
//  - run_pair (small products): two independent tasks run concurrently, one per thread, so
//    the BLAS calls inside each task are sequential and the two cores stay busy.
// In both, each worker makes its BLAS calls sequential with SequentialBlas: MKL chooses its
// kernels (and so the rounding) by its own thread setting even where a nested call runs on one
// thread, so without it results differ between 1 and 2 threads on AVX-512 machines.
// Callers run below autograd (at::AutoDispatchBelowADInplaceOrView); the workers do too.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>

#include <algorithm>

#if defined(__GNUC__)
// MKL's per-thread thread count (its C interface), when torch's BLAS is MKL; weak, so it is
// null with any other BLAS.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
#define HEAT_FAST_MKL_LOCAL_THREADS MKL_Set_Num_Threads_Local
#else
#define HEAT_FAST_MKL_LOCAL_THREADS nullptr
#endif

namespace heat_fast::cpu {

// Makes BLAS calls on this thread sequential for its lifetime (MKL only; a no-op otherwise).
class SequentialBlas {
 public:
  SequentialBlas() {
    if (set_local_threads_ != nullptr) {
      previous_ = set_local_threads_(1);
    }
  }
  ~SequentialBlas() {
    if (set_local_threads_ != nullptr) {
      set_local_threads_(previous_);  // 0 (no local setting before) restores the global one
    }
  }
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int (*const set_local_threads_)(int) = HEAT_FAST_MKL_LOCAL_THREADS;
  int previous_ = 0;
};

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
    const SequentialBlas sequential;
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
    const SequentialBlas sequential;
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
