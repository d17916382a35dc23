// heat_fast_C::he_cross_entropy (CPU and CUDA alike): the HE loss reduced ("none", "mean" or
// "sum") inside the op, with its autograd in C++, so that it can be called straight from
// Python with one dispatcher call and one autograd node per step (a Python autograd wrapper
// costs more than the kernels at small sizes). Forward runs the kernel op he_ce_forward and
// reduces; backward runs he_ce_backward. A mean or a sum over a small head on plain CPU tensors
// forms the asked-for gradients in the forward pass instead (cpu/he_loss.h) and backward only
// scales them by the incoming gradient. Where no gradient is recorded the
// CompositeExplicitAutograd kernel runs the forward without saving anything. The kernel ops
// themselves are not differentiable.
#include <ATen/Dispatch.h>
#include <ATen/core/Reduction.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/he_loss.h"

namespace heat_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double, bool, bool);
using Backward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, bool,
                                                    bool);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("heat_fast_C::he_ce_forward", "")
                             .typed<Forward>();
  return op.call(features, weight, target, scale, margin, label_smoothing, feature_norm,
                 weight_norm);
}

void check_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == at::Reduction::None || reduction == at::Reduction::Mean ||
                        reduction == at::Reduction::Sum,
                    "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

// Whether t's values can be read and written on the host here: a plain CPU tensor, not a fake,
// functional or other Python subclass tensor, and no Python dispatch mode watching (those see
// ATen ops, which the host paths would hide).
bool on_host(const at::Tensor& t) {
  return t.is_cpu() && !t.key_set().has(c10::DispatchKey::Python) &&
         !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

// Σ loss_rows (or its mean) as a 0-dim tensor of their dtype. On the CPU the rows are summed
// here in float64, in order: at::mean / at::sum cost more than the kernels at small sizes
// (≈ 17 µs of dispatch and scalar wrapping for 128 rows).
at::Tensor reduce(const at::Tensor& loss_rows, int64_t reduction) {
  if (reduction == at::Reduction::None) {
    return loss_rows;
  }
  if (!on_host(loss_rows)) {
    return reduction == at::Reduction::Mean ? at::mean(loss_rows) : at::sum(loss_rows);
  }
  at::Tensor total = at::empty({}, loss_rows.options());
  AT_DISPATCH_FLOATING_TYPES(loss_rows.scalar_type(), "he_cross_entropy_reduce", [&] {
    const at::Tensor rows = loss_rows.contiguous();
    const scalar_t* data = rows.const_data_ptr<scalar_t>();
    const int64_t count = rows.numel();
    double sum = 0;
    for (int64_t i = 0; i < count; ++i) {
      sum += static_cast<double>(data[i]);
    }
    const bool mean = reduction == at::Reduction::Mean;
    *total.mutable_data_ptr<scalar_t>() =
        static_cast<scalar_t>(mean ? sum / static_cast<double>(count) : sum);
  });
  return total;
}

// The loss rows' gradient (B,) from the gradient of the reduced loss; for "mean" and "sum"
// a stride-0 view of one value (the kernels read grad_rows through its stride), formed on
// the host for CPU tensors (at::div with a scalar costs ≈ 9 µs).
at::Tensor loss_rows_grad(const at::Tensor& grad, int64_t reduction, int64_t batch) {
  if (reduction == at::Reduction::None) {
    return grad;
  }
  const double per_row = reduction == at::Reduction::Mean ? 1.0 / static_cast<double>(batch) : 1.0;
  if (!on_host(grad)) {
    return (per_row == 1.0 ? grad : at::mul(grad, per_row)).expand({batch});
  }
  at::Tensor value = at::empty({1}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "he_cross_entropy_grad", [&] {
    *value.mutable_data_ptr<scalar_t>() =
        static_cast<scalar_t>(grad.item<double>() * per_row);
  });
  return value.as_strided({batch}, {0});
}

// The options backward needs, in one saved value.
struct Options {
  int64_t reduction;
  bool feature_norm, weight_norm;
  bool fused;  // the gradients were formed in the forward (he_loss.h)

  int64_t pack() const {
    return reduction * 8 + (fused ? 4 : 0) + (feature_norm ? 2 : 0) + (weight_norm ? 1 : 0);
  }
  static Options unpack(int64_t packed) {
    return {packed / 8, (packed & 2) != 0, (packed & 1) != 0, (packed & 4) != 0};
  }
};

// Whether the forward can form the gradients too: a mean or a sum, plain CPU tensors, a head
// that fits he_loss.h's single pass.
bool forms_gradients_in_forward(const at::Tensor& features, const at::Tensor& weight,
                                const at::Tensor& target, int64_t reduction) {
  return reduction != at::Reduction::None && on_host(features) && on_host(weight) &&
         on_host(target) && cpu::fits_forward_backward(features, weight);
}

// grad · d, returning d itself when the incoming gradient is a host 1 (loss.backward()).
at::Tensor scaled(const at::Tensor& d, const at::Tensor& grad) {
  if (!d.defined() || (on_host(grad) && grad.item<double>() == 1.0)) {
    return d;
  }
  return at::mul(d, grad);
}

class HeCrossEntropy : public torch::autograd::Function<HeCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& features,
                            const at::Tensor& weight, const at::Tensor& target, double scale,
                            double margin, double label_smoothing, bool feature_norm,
                            bool weight_norm, int64_t reduction, bool features_grad,
                            bool weight_grad) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    Options options{reduction, feature_norm, weight_norm, false};
    if ((features_grad || weight_grad) &&
        forms_gradients_in_forward(features, weight, target, reduction)) {
      const double row_grad =
          reduction == at::Reduction::Mean ? 1.0 / static_cast<double>(features.size(0)) : 1.0;
      auto [loss, d_features, d_weight] = cpu::he_ce_forward_backward(
          features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm,
          row_grad, features_grad, weight_grad);
      ctx->save_for_backward({d_features, d_weight});
      options.fused = true;
      ctx->saved_data["options"] = options.pack();
      return reduce(loss, reduction);
    }
    auto [loss, grad_cos, feature_norms, weight_norms] = call_forward(
        features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm);
    ctx->save_for_backward({features, weight, grad_cos, feature_norms, weight_norms});
    ctx->saved_data["options"] = options.pack();
    return reduce(loss, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Options options = Options::unpack(ctx->saved_data["options"].toInt());
    variable_list result(11);
    if (!grads[0].defined()) {
      return result;  // no gradient reaches the loss: none leaves it
    }
    if (options.fused) {
      result[0] = scaled(saved[0], grads[0]);
      result[1] = scaled(saved[1], grads[0]);
      return result;
    }
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("heat_fast_C::he_ce_backward", "")
                               .typed<Backward>();
    const at::Tensor& grad_cos = saved[2];
    const at::Tensor grad_rows = loss_rows_grad(grads[0].to(grad_cos.scalar_type()),
                                                options.reduction, grad_cos.size(0));
    std::tie(result[0], result[1]) =
        op.call(grad_rows, saved[0], saved[1], grad_cos, saved[3], saved[4],
                options.feature_norm, options.weight_norm);
    return result;
  }
};

at::Tensor he_cross_entropy_autograd(const at::Tensor& features, const at::Tensor& weight,
                                     const at::Tensor& target, double scale, double margin,
                                     double label_smoothing, bool feature_norm, bool weight_norm,
                                     int64_t reduction) {
  check_reduction(reduction);
  const bool recording = at::GradMode::is_enabled();
  return HeCrossEntropy::apply(features, weight, target, scale, margin, label_smoothing,
                               feature_norm, weight_norm, reduction,
                               recording && features.requires_grad(),
                               recording && weight.requires_grad());
}

at::Tensor he_cross_entropy(const at::Tensor& features, const at::Tensor& weight,
                            const at::Tensor& target, double scale, double margin,
                            double label_smoothing, bool feature_norm, bool weight_norm,
                            int64_t reduction) {
  check_reduction(reduction);
  const at::Tensor loss = std::get<0>(call_forward(features, weight, target, scale, margin,
                                                   label_smoothing, feature_norm, weight_norm));
  return reduce(loss, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, Autograd, m) {
  m.impl("he_cross_entropy", &he_cross_entropy_autograd);
}

TORCH_LIBRARY_IMPL(heat_fast_C, CompositeExplicitAutograd, m) {
  m.impl("he_cross_entropy", &he_cross_entropy);
}

}  // namespace heat_fast
