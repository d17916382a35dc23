// CUDA entry points of heat_fast_C::he_ce_chunked_forward and he_ce_chunked_backward
// (HEAT_FAST_WITH_CUDA builds; contract in heat_fast/ops/he_loss_chunked.py): one chunk of
// classes at a time, the products on cuBLAS through at::mm and the passes of
// he_loss_chunked.cu between them, all on the current stream; nothing synchronizes with the
// host. Buffers beyond the inputs and gradients: per chunk (B, chunk) dots and operand and a
// (chunk, D) share of d_weight, plus (B, D) and per-row statistics.
//
// bf16 inputs (both) multiply as stored: exact products, float32 accumulation and output. The
// backward's operand H = dL/dcos ⊘ ‖x‖ ⊘ ‖W‖ is rounded to bf16 for its two products, except its
// target entries (the largest, −Σ_{j≠y} p_j), which chunk_target_terms adds in float32. Other
// dtypes multiply in the math dtype, the weight rows converted one chunk at a time.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "../chunked_checks.h"
#include "../no_autocast.h"
#include "launch_chunked.h"
#include "tensors.h"

namespace heat_fast::cuda {
namespace {

// The (B, chunk) and (chunk, D) buffers of a chunk hold about this many values each (32 MiB of
// float32): few enough chunks that launches stay cheap next to the products.
constexpr int64_t kChunkValues = int64_t(1) << 23;

int64_t chunk_classes(int64_t batch, int64_t classes, int64_t dim, int64_t requested) {
  if (requested > 0) {
    return std::min(requested, classes);
  }
  return std::min(classes, std::max<int64_t>(64, kChunkValues / std::max(batch, dim)));
}

// The features and chunks of weight rows as the products take them.
struct Operands {
  Operands(const at::Tensor& features, const at::Tensor& weight)
      : bf16(features.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16),
        acc(math_dtype(features)),
        x(bf16 ? features.contiguous() : features.to(acc).contiguous()),
        weight(weight.contiguous()) {}

  at::Tensor rows(int64_t first, int64_t count) const {
    const at::Tensor w = weight.narrow(0, first, count);
    return bf16 ? w : w.to(acc).contiguous();
  }
  DType operand() const { return bf16 ? DType::kBFloat16 : dtype_of(acc); }

  bool bf16;
  at::ScalarType acc;
  at::Tensor x, weight;
};

void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_chunked_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target, double scale,
    double margin, double label_smoothing, bool feature_norm, bool weight_norm, int64_t chunk) {
  check_he_chunked_forward(features, weight, target, chunk);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(features.device());
  const Operands op(features, weight);
  const at::Tensor labels = target.contiguous();
  const int64_t batch = op.x.size(0), dim = op.x.size(1), classes = op.weight.size(0);
  const auto stats = op.x.options().dtype(op.acc);
  at::Tensor feature_norms = at::empty({batch}, stats);
  at::Tensor weight_norms = at::empty({classes}, stats);
  check_launch(row_norms(op.x.const_data_ptr(), batch, feature_norm, nullptr, 0, false, dim,
                         dtype_of(op.x.scalar_type()), feature_norms.mutable_data_ptr(), nullptr,
                         current_stream()),
               "he_ce_chunked_forward");
  check_launch(row_norms(nullptr, 0, false, op.weight.const_data_ptr(), classes, weight_norm,
                         dim, dtype_of(op.weight.scalar_type()), nullptr,
                         weight_norms.mutable_data_ptr(), current_stream()),
               "he_ce_chunked_forward");
  const double lowest = op.acc == at::kDouble ? std::numeric_limits<double>::lowest()
                                              : std::numeric_limits<float>::lowest();
  at::Tensor z_max = at::full({batch}, lowest, stats);
  at::Tensor rest = at::zeros({batch}, stats), z_sum = at::zeros({batch}, stats);
  at::Tensor z_y = at::zeros({batch}, stats);
  const RowStats row_stats{ptr(z_max), ptr(rest), ptr(z_sum), ptr(z_y)};
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  const int64_t step = chunk_classes(batch, classes, dim, chunk);
  for (int64_t first = 0; first < classes; first += step) {
    const int64_t count = std::min(step, classes - first);
    const at::Tensor dots = product(op.x, op.rows(first, count).t(), op.bf16);
    check_launch(chunk_stats(dots.const_data_ptr(), batch, count, first,
                             labels.const_data_ptr<int64_t>(), feature_norms.const_data_ptr(),
                             weight_norms.const_data_ptr(), options, dtype_of(op.acc), row_stats,
                             current_stream()),
                 "he_ce_chunked_forward");
  }
  at::Tensor loss = at::empty({batch}, stats);
  at::Tensor lse = at::empty({batch}, stats);
  at::Tensor target_grad = at::empty({batch}, stats);
  check_launch(chunk_loss(row_stats, labels.const_data_ptr<int64_t>(), batch, classes, options,
                          dtype_of(op.acc), ptr(loss), ptr(lse), ptr(target_grad),
                          current_stream()),
               "he_ce_chunked_forward");
  return {loss, lse, target_grad, feature_norms, weight_norms};
}

std::tuple<at::Tensor, at::Tensor> he_ce_chunked_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& target, const at::Tensor& lse, const at::Tensor& target_grad,
    const at::Tensor& feature_norms, const at::Tensor& weight_norms, double scale,
    double label_smoothing, bool feature_norm, bool weight_norm, int64_t chunk) {
  check_he_chunked_backward(grad_rows, features, weight, target, lse, target_grad, feature_norms,
                            weight_norms, chunk);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(features.device());
  const Operands op(features, weight);
  const DType acc = dtype_of(op.acc);
  const auto in_acc = [&](const at::Tensor& t) { return t.to(op.acc).contiguous(); };
  const at::Tensor labels = target.contiguous();
  const at::Tensor g = in_acc(grad_rows), row_lse = in_acc(lse), t_grad = in_acc(target_grad);
  const at::Tensor x_norms = in_acc(feature_norms), w_norms = in_acc(weight_norms);
  // max(‖·‖, eps): the per-row factor that turns the products' rows (which carry 1 / ‖·‖)
  // into gradients w.r.t. the normalized rows, for the normalization backward (launch.h).
  const at::Tensor x_mult = feature_norm ? at::clamp_min(x_norms, 1e-12) : at::Tensor();
  const at::Tensor w_mult = weight_norm ? at::clamp_min(w_norms, 1e-12) : at::Tensor();
  const int64_t batch = op.x.size(0), dim = op.x.size(1), classes = op.weight.size(0);
  at::Tensor u = at::zeros({batch, dim}, op.x.options().dtype(op.acc));
  at::Tensor d_features = at::empty(features.sizes(), features.options());
  at::Tensor d_weight = at::empty_like(op.weight);
  const GradSide none{};
  const int64_t step = chunk_classes(batch, classes, dim, chunk);
  for (int64_t first = 0; first < classes; first += step) {
    const int64_t count = std::min(step, classes - first);
    const at::Tensor w = op.rows(first, count);
    const at::Tensor dots = product(op.x, w.t(), op.bf16);
    at::Tensor h =
        at::empty({batch, count}, op.x.options().dtype(op.bf16 ? at::kBFloat16 : op.acc));
    const GradOperand operand{dots.const_data_ptr(), batch, count, first, classes,
                              labels.const_data_ptr<int64_t>(), g.const_data_ptr(),
                              row_lse.const_data_ptr(), x_norms.const_data_ptr(),
                              w_norms.const_data_ptr(), scale, label_smoothing, acc,
                              op.operand(), h.mutable_data_ptr()};
    check_launch(chunk_grad_operand(operand, current_stream()), "he_ce_chunked_backward");
    u.add_(product(h, w, op.bf16));
    at::Tensor v = product(h.t(), op.x, op.bf16);
    const TargetTerms terms{batch, count, first, dim, labels.const_data_ptr<int64_t>(),
                            g.const_data_ptr(), t_grad.const_data_ptr(),
                            x_norms.const_data_ptr(), w_norms.const_data_ptr(),
                            op.x.const_data_ptr(), w.const_data_ptr(), acc, op.operand(),
                            u.mutable_data_ptr(), v.mutable_data_ptr()};
    check_launch(chunk_target_terms(terms, current_stream()), "he_ce_chunked_backward");
    const at::Tensor rows_out = d_weight.narrow(0, first, count);
    const GradSide weight_side{v.const_data_ptr(), nullptr,
                               weight_norm ? w_mult.narrow(0, first, count).const_data_ptr()
                                           : nullptr,
                               nullptr, w.const_data_ptr(), dtype_of(w.scalar_type()),
                               w_norms.narrow(0, first, count).const_data_ptr(), weight_norm,
                               rows_out.mutable_data_ptr(), dtype_of(rows_out.scalar_type()),
                               count};
    check_launch(finalize_grads(none, weight_side, dim, acc, 0.0, current_stream()),
                 "he_ce_chunked_backward");
  }
  const GradSide feature_side{u.const_data_ptr(), nullptr, ptr(x_mult), nullptr,
                              op.x.const_data_ptr(), dtype_of(op.x.scalar_type()),
                              x_norms.const_data_ptr(), feature_norm,
                              d_features.mutable_data_ptr(),
                              dtype_of(d_features.scalar_type()), batch};
  check_launch(finalize_grads(feature_side, none, dim, acc, 0.0, current_stream()),
               "he_ce_chunked_backward");
  return {d_features, d_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CUDA, m) {
  m.impl("he_ce_chunked_forward", &he_ce_chunked_forward);
  m.impl("he_ce_chunked_backward", &he_ce_chunked_backward);
}

}  // namespace heat_fast::cuda
