// Autograd for heat_fast_C::he_ce_forward (CPU and CUDA): the loss rows are differentiable
// w.r.t. features and weight through heat_fast_C::he_ce_backward, so the op can be called
// directly from Python without a Python autograd wrapper (whose dispatch costs more than the
// kernels at small sizes). grad_cos and the norms are outputs without gradient.
#include <ATen/core/dispatch/Dispatcher.h>
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

class HeCrossEntropy : public torch::autograd::Function<HeCrossEntropy> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& features,
                               const at::Tensor& weight, const at::Tensor& target, double scale,
                               double margin, double label_smoothing, bool feature_norm,
                               bool weight_norm) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("heat_fast_C::he_ce_forward", "")
                               .typed<Forward>();
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, grad_cos, feature_norms, weight_norms] =
        op.call(features, weight, target, scale, margin, label_smoothing, feature_norm,
                weight_norm);
    ctx->save_for_backward({features, weight, grad_cos, feature_norms, weight_norms});
    ctx->saved_data["feature_norm"] = feature_norm;
    ctx->saved_data["weight_norm"] = weight_norm;
    ctx->mark_non_differentiable({grad_cos, feature_norms, weight_norms});
    return {loss, grad_cos, feature_norms, weight_norms};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("heat_fast_C::he_ce_backward", "")
                               .typed<Backward>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_cos = saved[2];
    const at::Tensor grad_rows = grads[0].defined()
                                     ? grads[0].to(grad_cos.scalar_type()).contiguous()
                                     : at::zeros({grad_cos.size(0)}, grad_cos.options());
    auto [d_features, d_weight] =
        op.call(grad_rows, saved[0], saved[1], grad_cos, saved[3], saved[4],
                ctx->saved_data["feature_norm"].toBool(), ctx->saved_data["weight_norm"].toBool());
    return {d_features, d_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  const variable_list out = HeCrossEntropy::apply(features, weight, target, scale, margin,
                                                  label_smoothing, feature_norm, weight_norm);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, Autograd, m) {
  m.impl("he_ce_forward", &he_ce_forward);
}

}  // namespace heat_fast
