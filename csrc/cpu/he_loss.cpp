// CPU kernels of the fused HE cosine-margin cross-entropy (heat_fast.ops.he_loss contract).
//
// Forward: one GEMM for the raw dot products, then one parallel pass per row that turns them
// into cosines, margin logits, the loss and dloss/dcos. Backward: two GEMMs (G ⊘ ‖w‖) W and
// (G ⊘ ‖x‖)ᵀ X, each followed by one pass per row for the normalization backward. Math runs
// in float32 (float64 for float64 inputs); results do not depend on the thread count (see
// gemm.h). The row loops live in he_loss_kernels.inc (compiled per instruction set, isa.h).
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "gemm.h"
#include "isa.h"

namespace heat_fast::cpu {

struct LossOptions {
  double scale, margin, smoothing;
  bool feature_norm, weight_norm;
};

#define HEAT_FAST_KERNELS_INC "he_loss_kernels.inc"
#include "isa_variants.inc"
#undef HEAT_FAST_KERNELS_INC

namespace {

// Calls f(acc_t{}, kernels) with acc_t the C++ type of `acc` (float or double) and kernels
// a Kernels object of he_loss_kernels.inc compiled for this CPU.
template <typename F>
void with_kernels(at::ScalarType acc, const F& f) {
  on_this_cpu([&](auto use_avx2) {
    using K = std::conditional_t<decltype(use_avx2)::value, avx2::Kernels, baseline::Kernels>;
    if (acc == at::kDouble) {
      f(double{}, K{});
    } else {
      f(float{}, K{});
    }
  });
}

at::Tensor norms_or_ones(const at::Tensor& x, bool enabled) {
  if (!enabled) {
    return at::ones({x.size(0)}, x.options());
  }
  at::Tensor norms = at::empty({x.size(0)}, x.options());
  with_kernels(x.scalar_type(), [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    kernels.row_norms(x.const_data_ptr<acc_t>(), x.size(0), x.size(1),
                      norms.mutable_data_ptr<acc_t>());
  });
  return norms;
}

void normalize_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& norms) {
  with_kernels(x.scalar_type(), [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    kernels.normalize_backward(grad.mutable_data_ptr<acc_t>(), x.const_data_ptr<acc_t>(),
                               norms.const_data_ptr<acc_t>(), x.size(0), x.size(1));
  });
}

// Forward. Small products: the GEMM (as W Xᵀ, which BLAS runs faster for few classes) and the
// norms run concurrently. Large ones: X Wᵀ split across threads, then the norms. Either way
// one pass per row then forms the loss and dloss/dcos.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  check_he_forward(features, weight, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::ScalarType acc = math_dtype(features);
  const at::Tensor x = features.to(acc).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  const at::Tensor labels = target.contiguous();
  const int64_t batch = x.size(0);
  const int64_t classes = w.size(0);
  const bool small = is_small_product(batch, classes, x.size(1));
  at::Tensor grad_cos = at::empty({batch, classes}, x.options());
  at::Tensor dots = small ? at::empty({classes, batch}, x.options()) : grad_cos;
  at::Tensor feature_norms, weight_norms;
  auto norms = [&] {
    feature_norms = norms_or_ones(x, feature_norm);
    weight_norms = norms_or_ones(w, weight_norm);
  };
  if (small) {
    run_pair([&] { at::mm_out(dots, w, x.t()); }, norms);
  } else {
    split_mm_out(dots, x, w.t());
    norms();
  }
  at::Tensor loss = at::empty({batch}, x.options());
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  with_kernels(acc, [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    kernels.ce_rows(dots.const_data_ptr<acc_t>(), dots.stride(small ? 1 : 0),
                    dots.stride(small ? 0 : 1), grad_cos.mutable_data_ptr<acc_t>(),
                    labels.const_data_ptr<int64_t>(), feature_norms.const_data_ptr<acc_t>(),
                    weight_norms.const_data_ptr<acc_t>(), batch, classes, options,
                    loss.mutable_data_ptr<acc_t>());
  });
  return {loss, grad_cos, feature_norms, weight_norms};
}

// out = a · b: one sequential BLAS call for small products (inside run_pair), else split.
void product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool small) {
  if (small) {
    at::mm_out(out, a, b);
  } else {
    split_mm_out(out, a, b);
  }
}

// Backward: d_features = (G ⊘ ‖w‖) W and d_weight = (G ⊘ ‖x‖)ᵀ X, each followed by its
// normalization backward; for small products the two halves run concurrently.
std::tuple<at::Tensor, at::Tensor> he_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& grad_cos, const at::Tensor& feature_norms, const at::Tensor& weight_norms,
    bool feature_norm, bool weight_norm) {
  check_he_backward(grad_rows, features, weight, grad_cos, feature_norms, weight_norms);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::ScalarType acc = math_dtype(features);
  const at::Tensor x = features.to(acc).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  const at::Tensor g_rows = grad_rows.to(acc).contiguous();
  const at::Tensor g_cos = grad_cos.to(acc).contiguous();
  const at::Tensor x_norms = feature_norms.to(acc).contiguous();
  const at::Tensor w_norms = weight_norms.to(acc).contiguous();
  at::Tensor gw = at::empty_like(g_cos);
  at::Tensor gx = at::empty_like(g_cos);
  with_kernels(acc, [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    kernels.scaled_grads(g_rows.const_data_ptr<acc_t>(), g_cos.const_data_ptr<acc_t>(),
                         x_norms.const_data_ptr<acc_t>(), w_norms.const_data_ptr<acc_t>(),
                         g_cos.size(0), g_cos.size(1), feature_norm, weight_norm,
                         gw.mutable_data_ptr<acc_t>(), gx.mutable_data_ptr<acc_t>());
  });
  at::Tensor d_features = at::empty_like(x);
  at::Tensor d_weight = at::empty_like(w);
  const bool small = is_small_product(x.size(0), w.size(0), x.size(1));
  auto features_half = [&] {
    product(d_features, gw, w, small);
    if (feature_norm) {
      normalize_backward(d_features, x, x_norms);
    }
  };
  auto weight_half = [&] {
    product(d_weight, gx.t(), x, small);
    if (weight_norm) {
      normalize_backward(d_weight, w, w_norms);
    }
  };
  if (small) {
    run_pair(features_half, weight_half);
  } else {
    features_half();
    weight_half();
  }
  return {d_features.to(features.scalar_type()), d_weight.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("he_ce_forward", &he_ce_forward);
  m.impl("he_ce_backward", &he_ce_backward);
}

}  // namespace heat_fast::cpu
