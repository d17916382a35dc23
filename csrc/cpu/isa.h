// Run-time choice of the instruction set for the CPU kernels.
//
// A kernels file (*_kernels.inc) is included twice by its .cpp: inside namespace `baseline`
// (the compiler's default target) and, on x86-64 with GCC, inside namespace `avx2` under
// `#pragma GCC target("avx2")` (no FMA, so rounding is the same in both). Entry points call
// on_this_cpu(f), which passes std::true_type when the AVX2 copy should run.
#pragma once

#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HEAT_FAST_AVX2_KERNELS 1
#endif

namespace heat_fast::cpu {

inline bool has_avx2() {
#ifdef HEAT_FAST_AVX2_KERNELS
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return supported;
#else
  return false;
#endif
}

// Calls f(std::true_type{}) when the AVX2 kernels should run, else f(std::false_type{}).
template <typename F>
void on_this_cpu(const F& f) {
  if (has_avx2()) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace heat_fast::cpu
