// Dtype dispatch of the CPU elementwise kernels (affine_relu.cpp, max_pool.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace heat_fast::cpu {

// Calls f(T{}, acc_t{}) for the C++ element type T of dtype t and its math type acc_t
// (float64 for float64, float32 otherwise).
template <typename F>
void dispatch_float_math(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: return f(float{}, float{});
    case at::kDouble: return f(double{}, double{});
    case at::kHalf: return f(c10::Half{}, float{});
    case at::kBFloat16: return f(c10::BFloat16{}, float{});
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

}  // namespace heat_fast::cpu
