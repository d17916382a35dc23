// Argument checks shared by the CPU and CUDA entry points of the heat_fast_C ops.
// Each failure is a c10::Error whose message names the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "budgets.h"

namespace heat_fast {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype the kernels compute in: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType math_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_float_dtype(t.scalar_type()), name,
              " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_on(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.device() == device, name, " must be on ", device, " like the other inputs, got ",
              t.device());
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

inline void check_he_forward(const at::Tensor& features, const at::Tensor& weight,
                             const at::Tensor& target) {
  check_float(features, "features");
  check_float(weight, "weight");
  TORCH_CHECK(features.dim() == 2, "features must be 2-D (B, D), got shape ", features.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == features.size(1),
              "weight must have shape (C, ", features.size(1), ") to match features, got ",
              weight.sizes());
  TORCH_CHECK(features.size(0) >= 1 && features.size(1) >= 1,
              "features must have B >= 1 and D >= 1, got shape ", features.sizes());
  TORCH_CHECK(weight.size(0) >= 2, "weight must have C >= 2 class rows, got shape ",
              weight.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong, "target must be int64, got ",
              target.scalar_type());
  check_shape(target, "target", {features.size(0)});
  check_on(weight, "weight", features.device());
  check_on(target, "target", features.device());
}

// cos (B, C) with B >= 1 and C >= 2 cosines (or scaled cosines) and target (B,) int64.
inline void check_cos_forward(const at::Tensor& cos, const at::Tensor& target) {
  check_float(cos, "cos");
  TORCH_CHECK_VALUE(cos.dim() == 2 && cos.size(0) >= 1 && cos.size(1) >= 2,
                    "cos must have shape (B, C) with B >= 1 and C >= 2, got ", cos.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "target must be int64, got ",
                   target.scalar_type());
  check_shape(target, "target", {cos.size(0)});
  check_on(target, "target", cos.device());
}

inline void check_he_backward(const at::Tensor& grad_rows, const at::Tensor& features,
                              const at::Tensor& weight, const at::Tensor& grad_cos,
                              const at::Tensor& feature_norms, const at::Tensor& weight_norms) {
  check_float(features, "features");
  check_float(weight, "weight");
  TORCH_CHECK(features.dim() == 2, "features must be 2-D (B, D), got shape ", features.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == features.size(1),
              "weight must have shape (C, ", features.size(1), ") to match features, got ",
              weight.sizes());
  const int64_t batch = features.size(0);
  const int64_t classes = weight.size(0);
  const std::pair<const at::Tensor*, const char*> stats[] = {
      {&grad_rows, "grad_rows"}, {&grad_cos, "grad_cos"},
      {&feature_norms, "feature_norms"}, {&weight_norms, "weight_norms"}};
  for (const auto& [t, name] : stats) {
    check_float(*t, name);
    check_on(*t, name, features.device());
  }
  check_on(weight, "weight", features.device());
  check_shape(grad_rows, "grad_rows", {batch});
  check_shape(grad_cos, "grad_cos", {batch, classes});
  check_shape(feature_norms, "feature_norms", {batch});
  check_shape(weight_norms, "weight_norms", {classes});
}

inline void check_pgd_norm(const std::string& norm) {
  TORCH_CHECK_VALUE(norm == "linf" || norm == "l2", "norm must be 'linf' or 'l2', got '", norm,
                    "'");
}

// out: a contiguous (B, ...) tensor with B >= 1, written in its own dtype.
inline void check_pgd_out(const at::Tensor& out) {
  check_float(out, "out");
  TORCH_CHECK_VALUE(out.dim() >= 1 && out.size(0) >= 1,
                    "out must have shape (B, ...) with B >= 1, got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "out must be contiguous");
}

// The images and budgets of pgd_step_ (heat_fast/ops/pgd.py); budgets: csrc/budgets.h.
inline void check_pgd_step(const at::Tensor& out, const at::Tensor& start, const at::Tensor& grad,
                           const at::Tensor& x_nat, const at::Tensor& eps,
                           const at::Tensor& alpha, const at::Tensor& clip_lo,
                           const at::Tensor& clip_hi, const std::string& norm) {
  check_pgd_out(out);
  const std::pair<const at::Tensor*, const char*> images[] = {
      {&start, "start"}, {&grad, "grad"}, {&x_nat, "x_nat"}};
  for (const auto& [t, name] : images) {
    check_float(*t, name);
    check_on(*t, name, out.device());
    check_shape(*t, name, out.sizes());
  }
  TORCH_CHECK_VALUE(start.scalar_type() == out.scalar_type(), "out must have start's dtype ",
                    start.scalar_type(), ", got ", out.scalar_type());
  check_pgd_norm(norm);
  const double zero = 0;
  const bool l2 = norm == "l2";
  check_budget(eps, "eps", out, l2, &zero, false);
  check_budget(alpha, "alpha", out, l2, &zero, true);
  check_budget(clip_lo, "clip_lo", out, false, nullptr, false);
  check_budget(clip_hi, "clip_hi", out, false, nullptr, false);
  if (is_host_scalar(clip_lo) && is_host_scalar(clip_hi)) {
    TORCH_CHECK_VALUE(clip_lo.item<double>() <= clip_hi.item<double>(),
                      "clip_lo must be <= clip_hi, got ", clip_lo.item<double>(), " > ",
                      clip_hi.item<double>());
  }
}

inline void check_random_init(const at::Tensor& out, const at::Tensor& x_nat,
                              const at::Tensor& eps, const at::Tensor& clip_lo,
                              const at::Tensor& clip_hi, const at::Tensor& seed,
                              const std::string& norm) {
  check_pgd_out(out);
  check_float(x_nat, "x_nat");
  check_on(x_nat, "x_nat", out.device());
  check_shape(x_nat, "x_nat", out.sizes());
  TORCH_CHECK_VALUE(out.scalar_type() == x_nat.scalar_type(), "out must have x_nat's dtype ",
                    x_nat.scalar_type(), ", got ", out.scalar_type());
  check_pgd_norm(norm);
  const double zero = 0;
  check_budget(eps, "eps", out, norm == "l2", &zero, false);
  check_budget(clip_lo, "clip_lo", out, false, nullptr, false);
  check_budget(clip_hi, "clip_hi", out, false, nullptr, false);
  TORCH_CHECK_VALUE(seed.dim() == 0 && seed.scalar_type() == at::kLong,
                    "seed must be a 0-dim int64 tensor, got ", seed.scalar_type(), " of shape ",
                    seed.sizes());
  check_on(seed, "seed", out.device());
}

}  // namespace heat_fast
