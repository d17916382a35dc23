// Run-time choice of the instruction set for the CPU kernels.
//
// A kernels file (*_kernels.inc) is included twice by its .cpp: inside namespace `baseline`
// (the compiler's default target) and, on x86-64 with GCC, inside namespace `avx2` under
// `#pragma GCC target("avx2")` (no FMA, so rounding is the same in both). Entry points call
// on_this_cpu(f), which passes std::true_type when the AVX2 copy should run. The small
// products (small_gemm.h) have AVX-512 and AVX2 + FMA variants too.
//
// HEAT_FAST_CPU_ISA=baseline|avx2|avx512, read once, caps the choice (tests run every
// variant on one machine this way); unset, the widest the CPU supports is used.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HEAT_FAST_AVX2_KERNELS 1
#endif

namespace heat_fast::cpu {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };  // AVX2 here: AVX2 and FMA

// The instruction set the CPU kernels use: the widest this CPU supports, capped by
// HEAT_FAST_CPU_ISA.
inline Isa cpu_isa() {
  static const Isa isa = [] {
    Isa supported = Isa::kBaseline;
#ifdef HEAT_FAST_AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      supported = __builtin_cpu_supports("avx512f") ? Isa::kAvx512 : Isa::kAvx2;
    }
#endif
    const char* cap = std::getenv("HEAT_FAST_CPU_ISA");
    if (cap == nullptr || *cap == '\0') {
      return supported;
    }
    Isa limit = Isa::kAvx512;
    if (std::strcmp(cap, "baseline") == 0) {
      limit = Isa::kBaseline;
    } else if (std::strcmp(cap, "avx2") == 0) {
      limit = Isa::kAvx2;
    } else {
      TORCH_CHECK_VALUE(std::strcmp(cap, "avx512") == 0,
                        "HEAT_FAST_CPU_ISA must be baseline, avx2 or avx512, got '", cap, "'");
    }
    return static_cast<int>(limit) < static_cast<int>(supported) ? limit : supported;
  }();
  return isa;
}

// Calls f(std::true_type{}) when the AVX2 kernels should run, else f(std::false_type{}).
template <typename F>
void on_this_cpu(const F& f) {
  if (cpu_isa() != Isa::kBaseline) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace heat_fast::cpu
