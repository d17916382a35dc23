// Argument checks of the chunked HE loss ops (heat_fast_C::he_ce_chunked_*), CPU and CUDA
// alike; each failure is a c10::Error naming the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>

#include "checks.h"

namespace heat_fast {

// A label outside [0, classes) raises the ValueError of heat_fast._checks.
inline void check_he_label(int64_t y, int64_t classes) {
  TORCH_CHECK_VALUE(y >= 0 && y < classes, "target holds label ", y, ", expected labels in [0, ",
                    classes, ") for weight with ", classes, " classes");
}

// heat_fast_C::he_ce_chunked_forward's inputs: those of he_ce_forward and classes per chunk
// (0: the kernel's choice).
inline void check_he_chunked_forward(const at::Tensor& features, const at::Tensor& weight,
                                     const at::Tensor& target, int64_t chunk) {
  check_he_forward(features, weight, target);
  TORCH_CHECK_VALUE(chunk >= 0, "chunk must be >= 0 (0: automatic), got ", chunk);
}

// heat_fast_C::he_ce_chunked_backward's inputs: those of the forward, the per-row statistics it
// returned and the incoming gradient of its loss rows.
inline void check_he_chunked_backward(const at::Tensor& grad_rows, const at::Tensor& features,
                                      const at::Tensor& weight, const at::Tensor& target,
                                      const at::Tensor& lse, const at::Tensor& target_grad,
                                      const at::Tensor& feature_norms,
                                      const at::Tensor& weight_norms, int64_t chunk) {
  check_he_chunked_forward(features, weight, target, chunk);
  const std::pair<const at::Tensor*, const char*> rows[] = {
      {&grad_rows, "grad_rows"}, {&lse, "lse"}, {&target_grad, "target_grad"},
      {&feature_norms, "feature_norms"}};
  for (const auto& [t, name] : rows) {
    check_float(*t, name);
    check_on(*t, name, features.device());
    check_shape(*t, name, {features.size(0)});
  }
  check_float(weight_norms, "weight_norms");
  check_on(weight_norms, "weight_norms", features.device());
  check_shape(weight_norms, "weight_norms", {weight.size(0)});
}

}  // namespace heat_fast
