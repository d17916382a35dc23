// Argument checks shared by the CPU and CUDA entry points of the heat_fast_C ops.
// Each failure is a c10::Error whose message names the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

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

inline void check_per_sample(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be a float32 tensor, got ",
              t.scalar_type());
  check_shape(t, name, {like.size(0)});
  check_on(t, name, like.device());
}

inline void check_pgd_norm(const std::string& norm) {
  TORCH_CHECK(norm == "linf" || norm == "l2", "norm must be 'linf' or 'l2', got '", norm, "'");
}

inline void check_box(double clip_min, double clip_max) {
  TORCH_CHECK(clip_min <= clip_max, "clip_min must be <= clip_max, got ", clip_min, " > ",
              clip_max);
}

// out is written in its own dtype; the other tensors share its shape (B, ...), B >= 1.
inline void check_pgd_step(const at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& grad,
                           const at::Tensor& x_nat, const at::Tensor& eps,
                           const at::Tensor& alpha, const std::string& norm, double clip_min,
                           double clip_max) {
  const std::pair<const at::Tensor*, const char*> images[] = {
      {&out, "out"}, {&x_adv, "x_adv"}, {&grad, "grad"}, {&x_nat, "x_nat"}};
  TORCH_CHECK(out.dim() >= 1 && out.size(0) >= 1, "out must have shape (B, ...) with B >= 1, got ",
              out.sizes());
  for (const auto& [t, name] : images) {
    check_float(*t, name);
    check_on(*t, name, out.device());
    check_shape(*t, name, out.sizes());
  }
  TORCH_CHECK(x_adv.scalar_type() == out.scalar_type(), "out must have x_adv's dtype ",
              x_adv.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  check_per_sample(eps, "eps", out);
  check_per_sample(alpha, "alpha", out);
  check_pgd_norm(norm);
  check_box(clip_min, clip_max);
}

inline void check_random_init(const at::Tensor& out, const at::Tensor& x_nat,
                              const at::Tensor& eps, const at::Tensor& seed,
                              const std::string& norm, double clip_min, double clip_max) {
  TORCH_CHECK(out.dim() >= 1 && out.size(0) >= 1, "out must have shape (B, ...) with B >= 1, got ",
              out.sizes());
  check_float(out, "out");
  check_float(x_nat, "x_nat");
  check_on(x_nat, "x_nat", out.device());
  check_shape(x_nat, "x_nat", out.sizes());
  TORCH_CHECK(out.scalar_type() == x_nat.scalar_type(), "out must have x_nat's dtype ",
              x_nat.scalar_type(), ", got ", out.scalar_type());
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  check_per_sample(eps, "eps", out);
  TORCH_CHECK(seed.dim() == 0 && seed.scalar_type() == at::kLong,
              "seed must be a 0-dim int64 tensor, got ", seed.scalar_type(), " of shape ",
              seed.sizes());
  check_on(seed, "seed", out.device());
  check_pgd_norm(norm);
  check_box(clip_min, clip_max);
}

}  // namespace heat_fast
