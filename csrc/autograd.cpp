// heat_fast_C::he_cross_entropy (CPU and CUDA alike): the HE loss reduced ("none", "mean" or
// "sum") inside the op, with its autograd in C++, so that it can be called straight from
// Python with one dispatcher call and one autograd node per step (a Python autograd wrapper
// costs more than the kernels at small sizes). Forward runs the kernel op he_ce_forward and
// reduces; backward runs he_ce_backward. Where no gradient is recorded the
// CompositeExplicitAutograd kernel does the same without saving anything. The kernel ops
// themselves are not differentiable.
#include <ATen/core/Reduction.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>

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
// functional or other Python subclass tensor (those go through ATen ops).
bool on_host(const at::Tensor& t) {
  return t.is_cpu() && !t.key_set().has(c10::DispatchKey::Python);
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

// The options backward needs, in one saved value: reduction, feature_norm, weight_norm.
int64_t pack(int64_t reduction, bool feature_norm, bool weight_norm) {
  return reduction * 4 + (feature_norm ? 2 : 0) + (weight_norm ? 1 : 0);
}

class HeCrossEntropy : public torch::autograd::Function<HeCrossEntropy> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& features,
                            const at::Tensor& weight, const at::Tensor& target, double scale,
                            double margin, double label_smoothing, bool feature_norm,
                            bool weight_norm, int64_t reduction) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, grad_cos, feature_norms, weight_norms] = call_forward(
        features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm);
    ctx->save_for_backward({features, weight, grad_cos, feature_norms, weight_norms});
    ctx->saved_data["options"] = pack(reduction, feature_norm, weight_norm);
    return reduce(loss, reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("heat_fast_C::he_ce_backward", "")
                               .typed<Backward>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_cos = saved[2];
    const int64_t batch = grad_cos.size(0);
    const int64_t options = ctx->saved_data["options"].toInt();
    const at::Tensor grad_rows =
        grads[0].defined()
            ? loss_rows_grad(grads[0].to(grad_cos.scalar_type()), options / 4, batch)
            : at::zeros({batch}, grad_cos.options());
    auto [d_features, d_weight] = op.call(grad_rows, saved[0], saved[1], grad_cos, saved[3],
                                          saved[4], (options & 2) != 0, (options & 1) != 0);
    return {d_features, d_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor he_cross_entropy_autograd(const at::Tensor& features, const at::Tensor& weight,
                                     const at::Tensor& target, double scale, double margin,
                                     double label_smoothing, bool feature_norm, bool weight_norm,
                                     int64_t reduction) {
  check_reduction(reduction);
  return HeCrossEntropy::apply(features, weight, target, scale, margin, label_smoothing,
                               feature_norm, weight_norm, reduction);
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
