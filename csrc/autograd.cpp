// Autograd for the HE cross-entropy ops of heat_fast_C (CPU and CUDA alike):
//  - he_ce_forward: the loss rows are differentiable w.r.t. features and weight; grad_cos and
//    the norms are outputs without gradient;
//  - he_cross_entropy: the same loss reduced ("none", "mean" or "sum") inside the op, so a
//    training step records one autograd node instead of two.
// Both backward through heat_fast_C::he_ce_backward, and both can be called straight from
// Python with no Python autograd wrapper, whose dispatch costs more than the kernels at small
// sizes. he_cross_entropy also has a CompositeExplicitAutograd kernel (forward and reduce),
// used where no gradient is recorded.
#include <ATen/core/Reduction.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/div.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/sum.h>
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

at::Tensor reduce(const at::Tensor& loss_rows, int64_t reduction) {
  if (reduction == at::Reduction::Mean) {
    return at::mean(loss_rows);
  }
  return reduction == at::Reduction::Sum ? at::sum(loss_rows) : loss_rows;
}

// The loss rows' gradient (B,) from the gradient of the reduced loss.
at::Tensor loss_rows_grad(const at::Tensor& grad, int64_t reduction, int64_t batch) {
  if (reduction == at::Reduction::None) {
    return grad.contiguous();
  }
  const at::Tensor per_row = reduction == at::Reduction::Mean ? at::div(grad, static_cast<double>(batch)) : grad;
  return per_row.expand({batch}).contiguous();
}

class HeCrossEntropy : public torch::autograd::Function<HeCrossEntropy> {
 public:
  // Returns {the reduced loss, grad_cos, feature_norms, weight_norms}.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& features,
                               const at::Tensor& weight, const at::Tensor& target, double scale,
                               double margin, double label_smoothing, bool feature_norm,
                               bool weight_norm, int64_t reduction) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, grad_cos, feature_norms, weight_norms] = call_forward(
        features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm);
    ctx->save_for_backward({features, weight, grad_cos, feature_norms, weight_norms});
    ctx->saved_data["feature_norm"] = feature_norm;
    ctx->saved_data["weight_norm"] = weight_norm;
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({grad_cos, feature_norms, weight_norms});
    ctx->set_materialize_grads(false);  // grads of those outputs stay undefined, not zeros
    return {reduce(loss, reduction), grad_cos, feature_norms, weight_norms};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("heat_fast_C::he_ce_backward", "")
                               .typed<Backward>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_cos = saved[2];
    const int64_t batch = grad_cos.size(0);
    const at::Tensor grad_rows =
        grads[0].defined()
            ? loss_rows_grad(grads[0].to(grad_cos.scalar_type()),
                             ctx->saved_data["reduction"].toInt(), batch)
            : at::zeros({batch}, grad_cos.options());
    auto [d_features, d_weight] =
        op.call(grad_rows, saved[0], saved[1], grad_cos, saved[3], saved[4],
                ctx->saved_data["feature_norm"].toBool(), ctx->saved_data["weight_norm"].toBool());
    return {d_features, d_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward_autograd(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  const variable_list out =
      HeCrossEntropy::apply(features, weight, target, scale, margin, label_smoothing,
                            feature_norm, weight_norm, at::Reduction::None);
  return {out[0], out[1], out[2], out[3]};
}

at::Tensor he_cross_entropy_autograd(const at::Tensor& features, const at::Tensor& weight,
                                     const at::Tensor& target, double scale, double margin,
                                     double label_smoothing, bool feature_norm, bool weight_norm,
                                     int64_t reduction) {
  check_reduction(reduction);
  return HeCrossEntropy::apply(features, weight, target, scale, margin, label_smoothing,
                               feature_norm, weight_norm, reduction)[0];
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
  m.impl("he_ce_forward", &he_ce_forward_autograd);
  m.impl("he_cross_entropy", &he_cross_entropy_autograd);
}

TORCH_LIBRARY_IMPL(heat_fast_C, CompositeExplicitAutograd, m) {
  m.impl("he_cross_entropy", &he_cross_entropy);
}

}  // namespace heat_fast
