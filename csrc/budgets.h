// Budgets (csrc/budget.h) from the tensors the heat_fast_C pgd ops take, with their checks.
// A budget tensor is a float32 0-d CPU tensor (one value, read on the host) or a float32 tensor
// on the images' device whose shape broadcasts to theirs (heat_fast/_step_args.py).
#pragma once

#include <ATen/ExpandUtils.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "budget.h"

namespace heat_fast {

// A Budget and the contiguous tensor its `values` point into.
struct BudgetTensor {
  at::Tensor values;
  Budget budget;
};

inline bool is_host_scalar(const at::Tensor& t) { return t.dim() == 0 && t.is_cpu(); }

// The dimensions of `shape` along which `t`, broadcast to it, varies.
inline std::vector<int64_t> varying_dims(const at::Tensor& t, at::IntArrayRef shape) {
  const at::Tensor full = t.expand(shape);
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < static_cast<int64_t>(shape.size()); ++d) {
    if (shape[d] > 1 && full.stride(d) != 0) dims.push_back(d);
  }
  return dims;
}

// `name` is a float32 budget for images of `like`'s shape and device; a host scalar also
// satisfies value >= minimum (when given) and finiteness (when asked); with per_sample_only
// it varies along the batch dimension at most.
inline void check_budget(const at::Tensor& t, const char* name, const at::Tensor& like,
                         bool per_sample_only, const double* minimum, bool finite) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " must be a float32 budget tensor, got ",
                   t.scalar_type());
  if (is_host_scalar(t)) {
    const double v = t.item<double>();
    TORCH_CHECK_VALUE(!minimum || v >= *minimum, name, " must be >= ", minimum ? *minimum : 0,
                      ", got ", v);
    TORCH_CHECK_VALUE(!finite || std::isfinite(v), name, " must be finite, got ", v);
    return;
  }
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be a 0-d CPU tensor or on ",
                    like.device(), ", got ", t.device());
  TORCH_CHECK_VALUE(at::is_expandable_to(t.sizes(), like.sizes()), name, " of shape ",
                    t.sizes(), " does not broadcast to the images' shape ", like.sizes());
  if (per_sample_only) {
    for (int64_t d : varying_dims(t, like.sizes())) {
      TORCH_CHECK_VALUE(d == 0, name, " must be one value per sample for norm 'l2', got shape ",
                        t.sizes());
    }
  }
}

// The Budget of `t` for contiguous images of `shape` (values made contiguous where needed).
inline BudgetTensor make_budget(const at::Tensor& t, at::IntArrayRef shape) {
  int64_t total = 1;
  for (int64_t size : shape) total *= size;
  BudgetTensor b;
  if (is_host_scalar(t)) {
    b.budget.scalar = t.item<float>();
    return b;
  }
  const std::vector<int64_t> dims = varying_dims(t, shape);
  const at::Tensor full = t.expand(shape);
  if (dims.empty()) {
    b.values = full.reshape({-1}).slice(0, 0, 1).contiguous();
    b.budget = {0, nullptr, total, 1};
  } else {
    const int64_t first = dims.front();
    const int64_t last = dims.back();
    bool adjacent = true;
    for (int64_t d = first; d <= last; ++d) {
      adjacent = adjacent && (shape[d] == 1 || full.stride(d) != 0);
    }
    at::Tensor sub = full;
    int64_t inner = 1;
    if (adjacent) {
      for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
        if (d > last) inner *= shape[d];
        if (d < first || d > last) sub = sub.select(d, 0);
      }
    }
    b.values = sub.contiguous().reshape({-1});
    b.budget = {0, nullptr, adjacent ? inner : 1, b.values.numel()};
  }
  b.budget.values = b.values.const_data_ptr<float>();
  return b;
}

}  // namespace heat_fast
