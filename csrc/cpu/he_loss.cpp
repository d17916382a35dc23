// CPU kernels of the fused HE cosine-margin cross-entropy (heat_fast.ops.he_loss contract).
//
// Forward: one GEMM X Wᵀ for the raw dot products, then one parallel pass per row that turns
// them into cosines, margin logits, the loss and dloss/dcos in place. Backward: two GEMMs
// (G ⊘ ‖w‖) W and (G ⊘ ‖x‖)ᵀ X, then one pass per row for the normalization backward.
// Math runs in float32 (float64 for float64 inputs); results do not depend on the thread
// count (see gemm.h).
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "gemm.h"

namespace heat_fast::cpu {
namespace {

constexpr double kNormEps = 1e-12;  // F.normalize's eps on the norm
constexpr int64_t kGrainElements = 1 << 15;

int64_t row_grain(int64_t row_length) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(row_length, 1));
}

// 1 / max(norm, eps) when the normalization is on, else 1.
template <typename acc_t>
acc_t inverse_norm(acc_t norm, bool enabled) {
  return enabled ? acc_t(1) / std::max(norm, acc_t(kNormEps)) : acc_t(1);
}

// norms[r] = ‖x[r, :]‖₂ (sum of squares accumulated in float64).
template <typename acc_t>
void row_norms(const acc_t* x, int64_t rows, int64_t cols, acc_t* norms) {
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* row = x + r * cols;
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < cols; ++d) {
        sum += static_cast<double>(row[d]) * static_cast<double>(row[d]);
      }
      norms[r] = static_cast<acc_t>(std::sqrt(sum));
    }
  });
}

at::Tensor norms_or_ones(const at::Tensor& x, bool enabled) {
  if (!enabled) {
    return at::ones({x.size(0)}, x.options());
  }
  at::Tensor norms = at::empty({x.size(0)}, x.options());
  if (x.scalar_type() == at::kDouble) {
    row_norms(x.const_data_ptr<double>(), x.size(0), x.size(1), norms.mutable_data_ptr<double>());
  } else {
    row_norms(x.const_data_ptr<float>(), x.size(0), x.size(1), norms.mutable_data_ptr<float>());
  }
  return norms;
}

struct LossOptions {
  double scale, margin, smoothing;
  bool feature_norm, weight_norm;
};

// Row b of `buf` holds x_b · W_j on entry and dloss_b/dcos_bj on exit:
//   z_j = s (cos_j − m 1[j = y]),  p = softmax(z),
//   loss = (1 − ε)(lse − z_y) + ε (lse − mean z),
//   dloss/dcos_j = s (p_j − (1 − ε) 1[j = y] − ε / C).
// p_y − 1 is formed as −Σ_{j≠y} p_j and lse − z_y as log1p(Σ_{j≠y} e^{z_j − z_y}) when z_y is
// the largest logit, so neither cancels when p_y → 1.
template <typename acc_t>
void ce_rows(acc_t* buf, const int64_t* target, const acc_t* feature_norms,
             const acc_t* weight_norms, int64_t batch, int64_t classes, const LossOptions& o,
             acc_t* loss) {
  std::vector<acc_t> inv_weight(classes);
  for (int64_t j = 0; j < classes; ++j) {
    inv_weight[j] = inverse_norm(weight_norms[j], o.weight_norm);
  }
  const acc_t* inv_w = inv_weight.data();
  const auto s = static_cast<acc_t>(o.scale);
  const auto m = static_cast<acc_t>(o.margin);
  const auto eps = static_cast<acc_t>(o.smoothing);
  const acc_t off_target = eps / static_cast<acc_t>(classes);
  at::parallel_for(0, batch, row_grain(classes), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      acc_t* z = buf + b * classes;
      const int64_t y = target[b];
      TORCH_CHECK(y >= 0 && y < classes, "target holds label ", y, " at row ", b,
                  ", expected labels in [0, ", classes, ")");
      const acc_t inv_x = inverse_norm(feature_norms[b], o.feature_norm);
      const acc_t cos_y = z[y] * inv_x * inv_w[y];
      acc_t z_max = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : z_max)
      for (int64_t j = 0; j < classes; ++j) {
        z[j] = s * (z[j] * inv_x * inv_w[j]);
        z_max = std::max(z_max, z[j]);
      }
      const acc_t z_y = s * (cos_y - m);
      z[y] = z_y;
      z_max = std::max(z_max, z_y);
      acc_t z_sum = 0;
      if (eps != 0) {
#pragma omp simd reduction(+ : z_sum)
        for (int64_t j = 0; j < classes; ++j) {
          z_sum += z[j];
        }
      }
      z[y] = -std::numeric_limits<acc_t>::infinity();  // excluded from `rest`
      acc_t rest = 0;
      for (int64_t j = 0; j < classes; ++j) {
        z[j] = std::exp(z[j] - z_max);
        rest += z[j];
      }
      const acc_t e_y = std::exp(z_y - z_max);
      const acc_t sum_exp = e_y + rest;
      const acc_t inv_sum = acc_t(1) / sum_exp;
      const acc_t nll = z_y == z_max ? std::log1p(rest) : (z_max - z_y) + std::log(sum_exp);
      acc_t row_loss = nll;
      if (eps != 0) {
        const acc_t smooth = z_max + std::log(sum_exp) - z_sum / static_cast<acc_t>(classes);
        row_loss = (acc_t(1) - eps) * nll + eps * smooth;
      }
      loss[b] = row_loss;
#pragma omp simd
      for (int64_t j = 0; j < classes; ++j) {
        z[j] = s * (z[j] * inv_sum - off_target);
      }
      z[y] = s * (-rest * inv_sum + (eps - off_target));
    }
  });
}

// Row r of `grad` holds dL/dx̂_r on entry and dL/dx_r on exit, where x̂ = x / max(‖x‖, eps):
// (g − x̂ (x̂ · g)) / ‖x‖ when ‖x‖ > eps, else g / eps.
template <typename acc_t>
void normalize_backward_(acc_t* grad, const acc_t* x, const acc_t* norms, int64_t rows,
                         int64_t cols) {
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t* g = grad + r * cols;
      const acc_t* row = x + r * cols;
      const acc_t norm = norms[r];
      if (!(norm > acc_t(kNormEps))) {
        const auto inv_eps = static_cast<acc_t>(1.0 / kNormEps);
#pragma omp simd
        for (int64_t d = 0; d < cols; ++d) {
          g[d] *= inv_eps;
        }
        continue;
      }
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < cols; ++d) {
        dot += static_cast<double>(row[d]) * static_cast<double>(g[d]);
      }
      const acc_t inv = acc_t(1) / norm;
      const auto along = static_cast<acc_t>(dot / (static_cast<double>(norm) * norm));
#pragma omp simd
      for (int64_t d = 0; d < cols; ++d) {
        g[d] = (g[d] - row[d] * along) * inv;
      }
    }
  });
}

// gw = G ⊘ ‖w‖ and gx = G ⊘ ‖x‖ with G = grad_rows[:, None] · grad_cos (norms clamped at
// eps, or 1 when the normalization is off).
template <typename acc_t>
void scaled_grads(const acc_t* grad_rows, const acc_t* grad_cos, const acc_t* feature_norms,
                  const acc_t* weight_norms, int64_t batch, int64_t classes, bool feature_norm,
                  bool weight_norm, acc_t* gw, acc_t* gx) {
  std::vector<acc_t> inv_weight(classes);
  for (int64_t j = 0; j < classes; ++j) {
    inv_weight[j] = inverse_norm(weight_norms[j], weight_norm);
  }
  const acc_t* inv_w = inv_weight.data();
  at::parallel_for(0, batch, row_grain(classes), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const acc_t gr = grad_rows[b];
      const acc_t gr_x = gr * inverse_norm(feature_norms[b], feature_norm);
      const acc_t* in = grad_cos + b * classes;
      acc_t* out_w = gw + b * classes;
      acc_t* out_x = gx + b * classes;
#pragma omp simd
      for (int64_t j = 0; j < classes; ++j) {
        out_w[j] = gr * in[j] * inv_w[j];
        out_x[j] = gr_x * in[j];
      }
    }
  });
}

template <typename acc_t>
void he_ce_forward_kernel(const at::Tensor& dots, const at::Tensor& target,
                          const at::Tensor& feature_norms, const at::Tensor& weight_norms,
                          const LossOptions& o, const at::Tensor& loss) {
  ce_rows(dots.mutable_data_ptr<acc_t>(), target.const_data_ptr<int64_t>(),
          feature_norms.const_data_ptr<acc_t>(), weight_norms.const_data_ptr<acc_t>(),
          dots.size(0), dots.size(1), o, loss.mutable_data_ptr<acc_t>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  check_he_forward(features, weight, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::ScalarType acc = math_dtype(features);
  const at::Tensor x = features.to(acc).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  const at::Tensor labels = target.contiguous();
  at::Tensor dots = deterministic_mm(x, w.t());  // becomes grad_cos
  at::Tensor feature_norms = norms_or_ones(x, feature_norm);
  at::Tensor weight_norms = norms_or_ones(w, weight_norm);
  at::Tensor loss = at::empty({x.size(0)}, x.options());
  const LossOptions o{scale, margin, label_smoothing, feature_norm, weight_norm};
  if (acc == at::kDouble) {
    he_ce_forward_kernel<double>(dots, labels, feature_norms, weight_norms, o, loss);
  } else {
    he_ce_forward_kernel<float>(dots, labels, feature_norms, weight_norms, o, loss);
  }
  return {loss, dots, feature_norms, weight_norms};
}

template <typename acc_t>
void he_ce_backward_kernel(const at::Tensor& grad_rows, const at::Tensor& grad_cos,
                           const at::Tensor& feature_norms, const at::Tensor& weight_norms,
                           bool feature_norm, bool weight_norm, const at::Tensor& gw,
                           const at::Tensor& gx) {
  scaled_grads(grad_rows.const_data_ptr<acc_t>(), grad_cos.const_data_ptr<acc_t>(),
               feature_norms.const_data_ptr<acc_t>(), weight_norms.const_data_ptr<acc_t>(),
               grad_cos.size(0), grad_cos.size(1), feature_norm, weight_norm,
               gw.mutable_data_ptr<acc_t>(), gx.mutable_data_ptr<acc_t>());
}

template <typename acc_t>
void normalize_backward_kernel(const at::Tensor& grad, const at::Tensor& x,
                               const at::Tensor& norms) {
  normalize_backward_(grad.mutable_data_ptr<acc_t>(), x.const_data_ptr<acc_t>(),
                      norms.const_data_ptr<acc_t>(), x.size(0), x.size(1));
}

void normalize_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& norms) {
  if (x.scalar_type() == at::kDouble) {
    normalize_backward_kernel<double>(grad, x, norms);
  } else {
    normalize_backward_kernel<float>(grad, x, norms);
  }
}

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
  if (acc == at::kDouble) {
    he_ce_backward_kernel<double>(g_rows, g_cos, x_norms, w_norms, feature_norm, weight_norm, gw,
                                  gx);
  } else {
    he_ce_backward_kernel<float>(g_rows, g_cos, x_norms, w_norms, feature_norm, weight_norm, gw,
                                 gx);
  }
  at::Tensor d_features = deterministic_mm(gw, w);
  at::Tensor d_weight = deterministic_mm(gx.t(), x);
  if (feature_norm) {
    normalize_backward(d_features, x, x_norms);
  }
  if (weight_norm) {
    normalize_backward(d_weight, w, w_norms);
  }
  return {d_features.to(features.scalar_type()), d_weight.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("he_ce_forward", &he_ce_forward);
  m.impl("he_ce_backward", &he_ce_backward);
}

}  // namespace heat_fast::cpu
