// CPU kernels of the fused HE cosine-margin cross-entropy (heat_fast.ops.he_loss contract).
//
// Forward: per block of rows, one GEMM for the raw dot products and one pass per row that turns
// them into cosines, margin logits, the loss and dloss/dcos. Backward: two GEMMs (G ⊘ ‖w‖) W
// and (G ⊘ ‖x‖)ᵀ X by blocks, each followed by the normalization backward of its rows. Math
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
#include "blas.h"
#include "isa.h"
#include "tasks.h"

namespace heat_fast::cpu {

struct LossOptions {
  double scale, margin, smoothing;
  bool feature_norm, weight_norm;
};

#define HEAT_FAST_KERNELS_INC "he_loss_kernels.inc"
#include "isa_variants.inc"
#undef HEAT_FAST_KERNELS_INC

namespace {

// Up to this many classes the forward product runs as W Xᵀ.
constexpr int64_t kFewClasses = 64;

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

// Forward: per block of batch rows (tasks.h), the feature norms, the block's dots (one GEMM)
// and one pass per row that turns them into cosines, margin logits, the loss and dloss/dcos.
// The weight norms come first (parallel over rows when there are many).
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
  const int64_t dim = x.size(1);
  at::Tensor grad_cos = at::empty({batch, classes}, x.options());
  at::Tensor loss = at::empty({batch}, x.options());
  at::Tensor feature_norms = feature_norm ? at::empty({batch}, x.options())
                                          : at::ones({batch}, x.options());
  at::Tensor weight_norms = weight_norm ? at::empty({classes}, x.options())
                                        : at::ones({classes}, x.options());
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  with_kernels(acc, [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    if (weight_norm) {
      kernels.row_norms(w.const_data_ptr<acc_t>(), classes, dim, rows_of<acc_t>(weight_norms, 0));
    }
    const acc_t* w_data = w.const_data_ptr<acc_t>();
    const Blocks rows = Blocks::halves(batch);
    run_tasks(rows.count, [&](int64_t block) {
      const int64_t first = rows.begin(block);
      const int64_t count = rows.length(block);
      if (feature_norm) {
        kernels.row_norms(rows_of<acc_t>(x, first), count, dim,
                          rows_of<acc_t>(feature_norms, first));
      }
      // BLAS forms the products of few classes faster as W Xᵀ (measured: 17 vs 25 µs for
      // 64 × 640 × 10), read transposed by ce_rows; the register-tiled kernels and BLAS with
      // many classes write X Wᵀ straight into grad_cos.
      const acc_t* x_rows = rows_of<acc_t>(x, first);
      const bool transposed = classes <= kFewClasses && !small_product(count, classes, dim);
      std::vector<acc_t> buffer(transposed ? classes * count : 0);
      acc_t* dots = transposed ? buffer.data() : rows_of<acc_t>(grad_cos, first);
      if (transposed) {
        matmul<acc_t>({w_data, dim}, {x_rows, dim, true}, dots, count, classes, count, dim);
      } else {
        matmul<acc_t>({x_rows, dim}, {w_data, dim, true}, dots, classes, count, classes, dim);
      }
      kernels.ce_rows(dots, transposed ? 1 : classes,
                      transposed ? count : 1, rows_of<acc_t>(grad_cos, first),
                      labels.const_data_ptr<int64_t>() + first,
                      rows_of<acc_t>(feature_norms, first), weight_norms.const_data_ptr<acc_t>(),
                      count, classes, options, rows_of<acc_t>(loss, first));
    });
  });
  return {loss, grad_cos, feature_norms, weight_norms};
}

// Backward: d_features = (G ⊘ ‖w‖) W by blocks of batch rows and d_weight = (G ⊘ ‖x‖)ᵀ X by
// blocks of classes, all blocks one pool of tasks; each block's GEMM is followed by its
// normalization backward.
std::tuple<at::Tensor, at::Tensor> he_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& grad_cos, const at::Tensor& feature_norms, const at::Tensor& weight_norms,
    bool feature_norm, bool weight_norm) {
  check_he_backward(grad_rows, features, weight, grad_cos, feature_norms, weight_norms);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::ScalarType acc = math_dtype(features);
  const at::Tensor x = features.to(acc).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  const at::Tensor g_rows = grad_rows.to(acc);  // any stride: "mean" passes one value, stride 0
  const int64_t g_stride = g_rows.stride(0);
  const at::Tensor g_cos = grad_cos.to(acc).contiguous();
  const at::Tensor x_norms = feature_norms.to(acc).contiguous();
  const at::Tensor w_norms = weight_norms.to(acc).contiguous();
  const int64_t batch = x.size(0);
  const int64_t classes = w.size(0);
  const int64_t dim = x.size(1);
  at::Tensor d_features = at::empty_like(x);
  at::Tensor d_weight = at::empty_like(w);
  with_kernels(acc, [&](auto acc_tag, auto kernels) {
    using acc_t = decltype(acc_tag);
    const int64_t macs = batch * classes * dim;
    const Blocks rows = Blocks::for_product(batch, macs);
    const Blocks class_rows = Blocks::for_product(classes, macs);
    run_tasks(rows.count + class_rows.count, [&](int64_t task) {
      if (task < rows.count) {
        const int64_t first = rows.begin(task);
        const int64_t count = rows.length(task);
        std::vector<acc_t> factor(count * classes);
        kernels.feature_factor(g_rows.const_data_ptr<acc_t>() + first * g_stride, g_stride,
                               rows_of<acc_t>(g_cos, first), w_norms.const_data_ptr<acc_t>(),
                               count, classes, weight_norm, factor.data());
        matmul<acc_t>({factor.data(), classes}, {w.const_data_ptr<acc_t>(), dim},
                      rows_of<acc_t>(d_features, first), dim, count, dim, classes);
        if (feature_norm) {
          kernels.normalize_backward(rows_of<acc_t>(d_features, first), rows_of<acc_t>(x, first),
                                     rows_of<acc_t>(x_norms, first), count, dim);
        }
        return;
      }
      const int64_t first = class_rows.begin(task - rows.count);
      const int64_t count = class_rows.length(task - rows.count);
      std::vector<acc_t> factor(count * batch);
      kernels.weight_factor(g_rows.const_data_ptr<acc_t>(), g_stride, g_cos.const_data_ptr<acc_t>(),
                            x_norms.const_data_ptr<acc_t>(), batch, classes, first, count,
                            feature_norm, factor.data());
      matmul<acc_t>({factor.data(), batch}, {x.const_data_ptr<acc_t>(), dim},
                    rows_of<acc_t>(d_weight, first), dim, count, dim, batch);
      if (weight_norm) {
        kernels.normalize_backward(rows_of<acc_t>(d_weight, first), rows_of<acc_t>(w, first),
                                   rows_of<acc_t>(w_norms, first), count, dim);
      }
    });
  });
  return {d_features.to(features.scalar_type()), d_weight.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("he_ce_forward", &he_ce_forward);
  m.impl("he_ce_backward", &he_ce_backward);
}

}  // namespace heat_fast::cpu
