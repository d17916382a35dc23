// CPU kernels of the fused HE cosine-margin cross-entropy (heat_fast.ops.he_loss contract).
//
// Forward: per block of rows, one GEMM for the raw dot products (forming the feature norms in
// the same pass when small) and one pass per row that turns them into cosines, margin logits,
// the loss and dloss/dcos. Backward: two GEMMs (G ⊘ ‖w‖) W
// and (G ⊘ ‖x‖)ᵀ X by blocks, each followed by the normalization backward of its rows. For a
// mean or sum over a small head both run in one pass (he_loss.h), which also folds the
// features' normalization backward into their product (fused_feature_grad_rows). Math
// runs in float32 (float64 for float64 inputs); results do not depend on the thread count
// (tasks.h). The row loops live in he_loss_kernels.inc (compiled per instruction set, isa.h).
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../no_autocast.h"
#include "blas.h"
#include "he_loss.h"
#include "isa.h"
#include "tasks.h"

namespace heat_fast::cpu {

#define HEAT_FAST_KERNELS_INC "he_loss_kernels.inc"
#include "isa_variants.inc"
#undef HEAT_FAST_KERNELS_INC

namespace {

// Up to this many classes the forward product runs as W Xᵀ.
constexpr int64_t kFewClasses = 64;
// he_ce_forward_backward keeps one C × D share of d_weight per block of rows, for at most
// this many blocks.
constexpr int64_t kMaxFusedBlocks = 16;

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

template <typename acc_t>
acc_t* rows_of(const at::Tensor& t, int64_t first) {
  return t.mutable_data_ptr<acc_t>() + first * (t.dim() > 1 ? t.size(1) : 1);
}

// The head's inputs in the math dtype (contiguous) and the forward's outputs (see the contract
// in heat_fast.ops.he_loss): what the block steps below read and write.
struct Head {
  Head(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
       bool feature_norm, bool weight_norm)
      : x(features.to(math_dtype(features)).contiguous()),
        w(weight.to(x.scalar_type()).contiguous()),
        labels(target.defined() ? target.contiguous() : target),
        batch(x.size(0)),
        classes(w.size(0)),
        dim(x.size(1)),
        feature_norm(feature_norm),
        weight_norm(weight_norm) {}

  // Allocates the forward's outputs.
  void allocate_forward() {
    grad_cos = at::empty({batch, classes}, x.options());
    loss = at::empty({batch}, x.options());
    const auto norms = [&](bool computed, int64_t count) {
      return computed ? at::empty({count}, x.options()) : at::ones({count}, x.options());
    };
    feature_norms = norms(feature_norm, batch);
    weight_norms = norms(weight_norm, classes);
  }

  at::Tensor x, w, labels;
  int64_t batch, classes, dim;
  bool feature_norm, weight_norm;
  at::Tensor grad_cos, loss, feature_norms, weight_norms;
};

// The forward of the rows [first, first + count): their norms, their dots (one GEMM) and one
// pass per row that turns them into cosines, margin logits, the loss and dloss/dcos (and
// Σ_j dloss/dcos_j · cos_j into grad_dot_cos[first:], when not null; Kernels::ce_rows).
template <typename acc_t, typename K>
void forward_rows(K kernels, const Head& h, const LossOptions& options, int64_t first,
                  int64_t count, acc_t* grad_dot_cos = nullptr) {
  const acc_t* x_rows = rows_of<acc_t>(h.x, first);
  const acc_t* w_data = h.w.const_data_ptr<acc_t>();
  acc_t* norms = rows_of<acc_t>(h.feature_norms, first);
  const bool small = small_product(count, h.classes, h.dim);
  // BLAS forms the products of few classes faster as W Xᵀ (measured: 17 vs 25 µs for
  // 64 × 640 × 10), read transposed by ce_rows; the register-tiled kernels and BLAS with
  // many classes write X Wᵀ straight into grad_cos.
  const bool transposed = h.classes <= kFewClasses && !small;
  std::vector<acc_t> buffer(transposed ? h.classes * count : 0);
  acc_t* dots = transposed ? buffer.data() : rows_of<acc_t>(h.grad_cos, first);
  if (small) {  // the register-tiled product forms the squared feature norms in its pass
    small_dots(x_rows, h.dim, w_data, h.dim, dots, h.classes, count, h.classes, h.dim,
               h.feature_norm ? norms : nullptr);
    for (int64_t r = 0; h.feature_norm && r < count; ++r) {
      norms[r] = std::sqrt(norms[r]);
    }
  } else {
    if (h.feature_norm) {
      kernels.row_norms(x_rows, count, h.dim, norms);
    }
    if (transposed) {
      matmul<acc_t>({w_data, h.dim}, {x_rows, h.dim, true}, dots, count, h.classes, count,
                    h.dim);
    } else {
      matmul<acc_t>({x_rows, h.dim}, {w_data, h.dim, true}, dots, h.classes, count, h.classes,
                    h.dim);
    }
  }
  kernels.ce_rows(dots, transposed ? 1 : h.classes, transposed ? count : 1,
                  rows_of<acc_t>(h.grad_cos, first), h.labels.const_data_ptr<int64_t>() + first,
                  rows_of<acc_t>(h.feature_norms, first), h.weight_norms.const_data_ptr<acc_t>(),
                  count, h.classes, options, rows_of<acc_t>(h.loss, first),
                  grad_dot_cos == nullptr ? nullptr : grad_dot_cos + first);
}

// d_features of the rows [first, first + count) = (G ⊘ ‖w‖) W followed by the normalization
// backward, with G = grad_rows[:, None] · grad_cos (grad_rows[b] at grad_rows + b · stride).
template <typename acc_t, typename K>
void feature_grad_rows(K kernels, const Head& h, const acc_t* grad_rows, int64_t stride,
                       int64_t first, int64_t count, const at::Tensor& d_features) {
  std::vector<acc_t> factor(count * h.classes);
  kernels.feature_factor(grad_rows + first * stride, stride, rows_of<acc_t>(h.grad_cos, first),
                         h.weight_norms.const_data_ptr<acc_t>(), count, h.classes, h.weight_norm,
                         factor.data());
  matmul<acc_t>({factor.data(), h.classes}, {h.w.const_data_ptr<acc_t>(), h.dim},
                rows_of<acc_t>(d_features, first), h.dim, count, h.dim, h.classes);
  if (h.feature_norm) {
    kernels.normalize_backward(rows_of<acc_t>(d_features, first), rows_of<acc_t>(h.x, first),
                               rows_of<acc_t>(h.feature_norms, first), count, h.dim);
  }
}

// The one pass's d_features of the rows [first, first + count), for G = row_grad · grad_cos:
// the product (G ⊘ ‖w‖) W and the normalization backward in one product,
// (G ⊘ ‖w‖ ⊘ ‖x‖) W + diag(along) X (Kernels::normalization_terms), so that d_features is
// written once and X read once. grad_dot_cos as forward_rows wrote it.
template <typename acc_t, typename K>
void fused_feature_grad_rows(K kernels, const Head& h, acc_t row_grad, const acc_t* grad_dot_cos,
                             int64_t first, int64_t count, const at::Tensor& d_features) {
  std::vector<acc_t> factor(count * h.classes);
  std::vector<acc_t> inverse(h.feature_norm ? count : 0);
  std::vector<acc_t> along(inverse.size());
  ScaledRows<acc_t> term;
  if (h.feature_norm) {
    kernels.normalization_terms(row_grad, grad_dot_cos + first,
                                rows_of<acc_t>(h.feature_norms, first), count, inverse.data(),
                                along.data());
    term = {along.data(), rows_of<acc_t>(h.x, first), h.dim};
  }
  kernels.feature_factor(&row_grad, 0, rows_of<acc_t>(h.grad_cos, first),
                         h.weight_norms.const_data_ptr<acc_t>(), count, h.classes, h.weight_norm,
                         factor.data(), h.feature_norm ? inverse.data() : nullptr);
  small_axpys<acc_t>(factor.data(), h.classes, 1, h.w.const_data_ptr<acc_t>(), h.dim,
                     rows_of<acc_t>(d_features, first), h.dim, count, h.dim, h.classes, term);
}

// out (class_count × D) = (G ⊘ ‖x‖)ᵀ X restricted to the classes [class_first, +class_count)
// and the batch rows [row_first, +row_count): the gradient w.r.t. the normalized weight rows
// (before their normalization backward), or the rows' share of it.
template <typename acc_t, typename K>
void weight_grad_part(K kernels, const Head& h, const acc_t* grad_rows, int64_t stride,
                      int64_t row_first, int64_t row_count, int64_t class_first,
                      int64_t class_count, acc_t* out) {
  std::vector<acc_t> factor(class_count * row_count);
  kernels.weight_factor(grad_rows + row_first * stride, stride,
                        rows_of<acc_t>(h.grad_cos, row_first),
                        rows_of<acc_t>(h.feature_norms, row_first), row_count, h.classes,
                        class_first, class_count, h.feature_norm, factor.data());
  matmul<acc_t>({factor.data(), row_count}, {rows_of<acc_t>(h.x, row_first), h.dim}, out, h.dim,
                class_count, h.dim, row_count);
}

// Forward: the weight norms, then the blocks of batch rows (tasks.h) in parallel.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  check_he_forward(features, weight, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  Head h(features, weight, target, feature_norm, weight_norm);
  h.allocate_forward();
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  with_kernels(h.x.scalar_type(), [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    if (weight_norm) {
      kernels.row_norms(h.w.const_data_ptr<acc_t>(), h.classes, h.dim,
                        rows_of<acc_t>(h.weight_norms, 0));
    }
    const Blocks rows = Blocks::halves(h.batch);
    run_tasks(rows.count, [&](int64_t block) {
      forward_rows<acc_t>(kernels, h, options, rows.begin(block), rows.length(block));
    });
  });
  return {h.loss, h.grad_cos, h.feature_norms, h.weight_norms};
}

// Backward: d_features by blocks of batch rows and d_weight by blocks of classes, all blocks
// one pool of tasks; each block's GEMM is followed by its normalization backward.
std::tuple<at::Tensor, at::Tensor> he_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& grad_cos, const at::Tensor& feature_norms, const at::Tensor& weight_norms,
    bool feature_norm, bool weight_norm) {
  check_he_backward(grad_rows, features, weight, grad_cos, feature_norms, weight_norms);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  Head h(features, weight, at::Tensor(), feature_norm, weight_norm);
  const at::ScalarType acc = h.x.scalar_type();
  h.grad_cos = grad_cos.to(acc).contiguous();
  h.feature_norms = feature_norms.to(acc).contiguous();
  h.weight_norms = weight_norms.to(acc).contiguous();
  const at::Tensor g_rows = grad_rows.to(acc);  // any stride: "mean" passes one value, stride 0
  at::Tensor d_features = at::empty_like(h.x);
  at::Tensor d_weight = at::empty_like(h.w);
  with_kernels(acc, [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    const acc_t* g = g_rows.const_data_ptr<acc_t>();
    const int64_t stride = g_rows.stride(0);
    const int64_t macs = h.batch * h.classes * h.dim;
    const Blocks rows = Blocks::for_product(h.batch, macs);
    const Blocks class_rows = Blocks::for_product(h.classes, macs);
    run_tasks(rows.count + class_rows.count, [&](int64_t task) {
      if (task < rows.count) {
        feature_grad_rows<acc_t>(kernels, h, g, stride, rows.begin(task), rows.length(task),
                                 d_features);
        return;
      }
      const int64_t first = class_rows.begin(task - rows.count);
      const int64_t count = class_rows.length(task - rows.count);
      weight_grad_part<acc_t>(kernels, h, g, stride, 0, h.batch, first, count,
                              rows_of<acc_t>(d_weight, first));
      if (weight_norm) {
        kernels.normalize_backward(rows_of<acc_t>(d_weight, first), rows_of<acc_t>(h.w, first),
                                   rows_of<acc_t>(h.weight_norms, first), count, h.dim);
      }
    });
  });
  return {d_features.to(features.scalar_type()), d_weight.to(weight.scalar_type())};
}

}  // namespace

bool fits_forward_backward(const at::Tensor& features, const at::Tensor& weight) {
  const int64_t batch = features.size(0);
  const Blocks rows = Blocks::halves(batch);
  return rows.count <= kMaxFusedBlocks &&
         small_product(rows.size, weight.size(0), features.size(1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> he_ce_forward_backward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm,
    double row_grad, bool features_grad, bool weight_grad) {
  check_he_forward(features, weight, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  Head h(features, weight, target, feature_norm, weight_norm);
  h.allocate_forward();
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  at::Tensor d_features = features_grad ? at::empty_like(h.x) : at::Tensor();
  at::Tensor d_weight = weight_grad ? at::empty_like(h.w) : at::Tensor();
  with_kernels(h.x.scalar_type(), [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    if (weight_norm) {
      kernels.row_norms(h.w.const_data_ptr<acc_t>(), h.classes, h.dim,
                        rows_of<acc_t>(h.weight_norms, 0));
    }
    const acc_t g = static_cast<acc_t>(row_grad);  // every row's dloss/dloss_row, stride 0
    const Blocks rows = Blocks::halves(h.batch);
    const int64_t part = h.classes * h.dim;
    std::vector<acc_t> parts(weight_grad ? rows.count * part : 0);
    std::vector<acc_t> grad_dot_cos(features_grad && feature_norm && h.dim > 1 ? h.batch : 0);
    run_tasks(rows.count, [&](int64_t block) {
      const int64_t first = rows.begin(block);
      const int64_t count = rows.length(block);
      forward_rows<acc_t>(kernels, h, options, first, count,
                          grad_dot_cos.empty() ? nullptr : grad_dot_cos.data());
      if (features_grad && h.dim > 1) {
        fused_feature_grad_rows<acc_t>(kernels, h, g, grad_dot_cos.data(), first, count,
                                       d_features);
      } else if (features_grad) {  // x̂ = ±1: the two steps cancel exactly, the fused form not
        feature_grad_rows<acc_t>(kernels, h, &g, 0, first, count, d_features);
      }
      if (weight_grad) {
        weight_grad_part<acc_t>(kernels, h, &g, 0, first, count, 0, h.classes,
                                parts.data() + block * part);
      }
    });
    if (weight_grad) {  // the blocks' shares summed in block order, then normalized
      acc_t* out = d_weight.mutable_data_ptr<acc_t>();
      std::copy(parts.begin(), parts.begin() + part, out);
      for (int64_t block = 1; block < rows.count; ++block) {
        const acc_t* share = parts.data() + block * part;
        for (int64_t i = 0; i < part; ++i) {
          out[i] += share[i];
        }
      }
      if (weight_norm) {
        kernels.normalize_backward(out, h.w.const_data_ptr<acc_t>(),
                                   h.weight_norms.const_data_ptr<acc_t>(), h.classes, h.dim);
      }
    }
  });
  const auto in_dtype = [](const at::Tensor& grad, const at::Tensor& like) {
    return grad.defined() ? grad.to(like.scalar_type()) : grad;
  };
  return {h.loss, in_dtype(d_features, features), in_dtype(d_weight, weight)};
}

namespace {

// The loss on cosines the model already formed (cos_margin_cross_entropy): one pass per row
// of Kernels::ce_rows with both normalizations off, blocks of rows in parallel.
std::tuple<at::Tensor, at::Tensor> cos_ce_forward(const at::Tensor& cos, const at::Tensor& target,
                                                  double scale, double margin,
                                                  double label_smoothing) {
  check_cos_forward(cos, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const at::Tensor c = cos.to(math_dtype(cos)).contiguous();
  const at::Tensor labels = target.contiguous();
  const int64_t batch = c.size(0);
  const int64_t classes = c.size(1);
  at::Tensor grad_cos = at::empty_like(c);
  at::Tensor loss = at::empty({batch}, c.options());
  const LossOptions options{scale, margin, label_smoothing, false, false};
  with_kernels(c.scalar_type(), [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    const Blocks rows = Blocks::halves(batch);
    run_tasks(rows.count, [&](int64_t block) {
      const int64_t first = rows.begin(block);
      kernels.ce_rows(rows_of<acc_t>(c, first), classes, int64_t{1},
                      rows_of<acc_t>(grad_cos, first), labels.const_data_ptr<int64_t>() + first,
                      static_cast<const acc_t*>(nullptr), static_cast<const acc_t*>(nullptr),
                      rows.length(block), classes, options, rows_of<acc_t>(loss, first));
    });
  });
  return {loss, grad_cos};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("he_ce_forward", &he_ce_forward);
  m.impl("he_ce_backward", &he_ce_backward);
  m.impl("cos_ce_forward", &cos_ce_forward);
}

}  // namespace heat_fast::cpu
