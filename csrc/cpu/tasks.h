// Parallel work on the CPU whose results do not depend on the thread count.
//
// Work is cut into tasks by shape alone (Blocks), never by the number of threads; run_tasks
// hands them to torch's threads, and each task computes its own slice of the output the same
// way whichever thread runs it. BLAS calls inside a task are made sequential (SequentialBlas):
// BLAS libraries split the inner dimension across threads for some shapes, and MKL chooses its
// kernels (so the rounding) by its own thread setting even where a nested call runs on one
// thread, which made results differ between 1 and 2 threads on AVX-512 machines.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

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

// [0, extent) cut into `count` consecutive blocks of `size` rows (the last one may be shorter).
struct Blocks {
  // Two blocks (so that two threads share even a small pass), of at most kMaxHalf rows.
  static Blocks halves(int64_t extent) {
    return Blocks(extent, std::min(kMaxHalf, (extent + 1) / 2));
  }

  // Blocks of the output rows of a product of `macs` multiply-adds: halves() for small
  // products; for large ones at least kMinLargeBlock rows, since BLAS runs products of fewer
  // rows far slower (measured with MKL: 128 × 1000 × 2048 twice took 1.9x as long as
  // 256 × 1000 × 2048 once), and at most kMaxBlocks of them.
  static Blocks for_product(int64_t extent, int64_t macs) {
    if (macs < kSmallProduct) {
      return halves(extent);
    }
    return Blocks(extent, std::max(kMinLargeBlock, (extent + kMaxBlocks - 1) / kMaxBlocks));
  }

  int64_t begin(int64_t block) const { return block * size; }
  int64_t length(int64_t block) const { return std::min(size, extent - block * size); }

  int64_t extent, size, count;

 private:
  static constexpr int64_t kMaxHalf = 128;
  static constexpr int64_t kSmallProduct = int64_t(1) << 24;
  static constexpr int64_t kMinLargeBlock = 256;
  static constexpr int64_t kMaxBlocks = 8;

  Blocks(int64_t extent, int64_t size)
      : extent(extent),
        size(std::max<int64_t>(1, std::min(size, extent))),
        count((extent + this->size - 1) / this->size) {}
};

// Runs task(i) for every i in [0, count) on torch's threads, each thread taking the next
// unclaimed task, so tasks of uneven cost balance. Tasks must write disjoint outputs. Each
// runs below autograd (the callers' guard is thread-local) with sequential BLAS.
template <typename Task>
void run_tasks(int64_t count, const Task& task) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(count, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const SequentialBlas sequential;
    for (int64_t i = next++; i < count; i = next++) {
      task(i);
    }
  });
}

}  // namespace heat_fast::cpu
