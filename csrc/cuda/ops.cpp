// CUDA entry points of the heat_fast_C ops (compiled only in HEAT_FAST_WITH_CUDA builds):
// argument checks, allocation, cuBLAS GEMMs through at::mm, and the launchers of launch.h on
// the current stream. Nothing here synchronizes with the host.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../checks.h"
#include "../no_autocast.h"
#include "launch.h"
#include "tensors.h"

namespace heat_fast::cuda {
namespace {

// Whether the inputs go to the GEMMs as stored: one 16-bit dtype (bf16/fp16 tensor cores,
// float32 accumulation). Otherwise both are copied to the math dtype.
bool sixteen_bit_pair(const at::Tensor& features, const at::Tensor& weight) {
  const at::ScalarType t = features.scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) && weight.scalar_type() == t;
}

at::Tensor gemm_input(const at::Tensor& t, bool as_stored, at::ScalarType acc) {
  return as_stored ? t.contiguous() : t.to(acc).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  check_he_forward(features, weight, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(features.device());
  const at::ScalarType acc = math_dtype(features);
  const bool sixteen_bit = sixteen_bit_pair(features, weight);
  const at::Tensor x = gemm_input(features, sixteen_bit, acc);
  const at::Tensor w = gemm_input(weight, sixteen_bit, acc);
  const at::Tensor labels = target.contiguous();
  at::Tensor dots = product(x, w.t(), sixteen_bit);  // becomes grad_cos
  const auto stats = dots.options();
  at::Tensor feature_norms = at::empty({x.size(0)}, stats);
  at::Tensor weight_norms = at::empty({w.size(0)}, stats);
  check_launch(row_norms(x.const_data_ptr(), x.size(0), feature_norm, w.const_data_ptr(),
                         w.size(0), weight_norm, x.size(1), dtype_of(x.scalar_type()),
                         feature_norms.mutable_data_ptr(), weight_norms.mutable_data_ptr(),
                         current_stream()),
               "he_ce_forward");
  at::Tensor loss = at::empty({x.size(0)}, stats);
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  check_launch(ce_rows(dots.mutable_data_ptr(), labels.const_data_ptr<int64_t>(),
                       feature_norms.const_data_ptr(), weight_norms.const_data_ptr(),
                       dots.size(0), dots.size(1), options, dtype_of(acc),
                       loss.mutable_data_ptr(), current_stream()),
               "he_ce_forward");
  return {loss, dots, feature_norms, weight_norms};
}

// The loss on cosines the model already formed: a float copy of them, then the per-row pass.
std::tuple<at::Tensor, at::Tensor> cos_ce_forward(const at::Tensor& cos, const at::Tensor& target,
                                                  double scale, double margin,
                                                  double label_smoothing) {
  check_cos_forward(cos, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(cos.device());
  const at::ScalarType acc = math_dtype(cos);
  at::Tensor grad_cos = at::empty(cos.sizes(), cos.options().dtype(acc));
  grad_cos.copy_(cos);  // never the caller's tensor: the pass below writes in place
  const at::Tensor labels = target.contiguous();
  at::Tensor loss = at::empty({cos.size(0)}, grad_cos.options());
  const LossOptions options{scale, margin, label_smoothing, false, false};
  check_launch(ce_rows(grad_cos.mutable_data_ptr(), labels.const_data_ptr<int64_t>(), nullptr,
                       nullptr, cos.size(0), cos.size(1), options, dtype_of(acc),
                       loss.mutable_data_ptr(), current_stream()),
               "cos_ce_forward");
  return {loss, grad_cos};
}

// Backward: the GEMM operands P and Q (launch.h), the products P·W and Qᵀ·x (each as a high
// and a low part for 16-bit inputs), then one pass that sums the parts, scales the rows and
// applies the normalization backward, storing each gradient in its input's dtype.
std::tuple<at::Tensor, at::Tensor> he_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& grad_cos, const at::Tensor& feature_norms, const at::Tensor& weight_norms,
    bool feature_norm, bool weight_norm) {
  check_he_backward(grad_rows, features, weight, grad_cos, feature_norms, weight_norms);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const c10::cuda::CUDAGuard guard(features.device());
  const at::ScalarType acc = math_dtype(features);
  const bool sixteen_bit = sixteen_bit_pair(features, weight);
  const at::Tensor x = gemm_input(features, sixteen_bit, acc);
  const at::Tensor w = gemm_input(weight, sixteen_bit, acc);
  const at::Tensor g_rows = grad_rows.to(acc).contiguous();
  const at::Tensor g_cos = grad_cos.to(acc).contiguous();
  const at::Tensor x_norms = feature_norms.to(acc).contiguous();
  const at::Tensor w_norms = weight_norms.to(acc).contiguous();
  const int64_t batch = g_cos.size(0);
  const int64_t classes = g_cos.size(1);
  const at::ScalarType operand = sixteen_bit ? x.scalar_type() : acc;
  const auto operands = g_cos.options().dtype(operand);
  const auto part = [&] { return at::empty({batch, classes}, operands); };
  at::Tensor p_hi = part(), q_hi = part();
  at::Tensor p_lo = sixteen_bit ? part() : at::Tensor();
  at::Tensor q_lo = sixteen_bit ? part() : at::Tensor();
  at::Tensor scales =
      operand == at::kHalf ? at::empty({2}, g_cos.options().dtype(at::kFloat)) : at::Tensor();
  const auto ptr = [](at::Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; };
  float* scale_ptr = scales.defined() ? scales.mutable_data_ptr<float>() : nullptr;
  const GradOperands args{g_rows.const_data_ptr(), g_cos.const_data_ptr(),
                          x_norms.const_data_ptr(), w_norms.const_data_ptr(), batch, classes,
                          dtype_of(acc), dtype_of(operand), ptr(p_hi), ptr(p_lo), ptr(q_hi),
                          ptr(q_lo), scale_ptr};
  check_launch(grad_operands(args, current_stream()), "he_ce_backward");
  at::Tensor gx_hi = product(p_hi, w, sixteen_bit);
  at::Tensor gw_hi = product(q_hi.t(), x, sixteen_bit);
  at::Tensor gx_lo = sixteen_bit ? product(p_lo, w, true) : at::Tensor();
  at::Tensor gw_lo = sixteen_bit ? product(q_lo.t(), x, true) : at::Tensor();
  at::Tensor d_features = at::empty(features.sizes(), features.options());
  at::Tensor d_weight = at::empty(weight.sizes(), weight.options());
  const GradSide feature_side{gx_hi.const_data_ptr(), ptr(gx_lo), g_rows.const_data_ptr(),
                              scale_ptr, x.const_data_ptr(), dtype_of(x.scalar_type()),
                              x_norms.const_data_ptr(), feature_norm,
                              d_features.mutable_data_ptr(),
                              dtype_of(d_features.scalar_type()), batch};
  const GradSide weight_side{gw_hi.const_data_ptr(), ptr(gw_lo), nullptr,
                             scale_ptr ? scale_ptr + 1 : nullptr, w.const_data_ptr(),
                             dtype_of(w.scalar_type()), w_norms.const_data_ptr(), weight_norm,
                             d_weight.mutable_data_ptr(), dtype_of(d_weight.scalar_type()),
                             classes};
  check_launch(finalize_grads(feature_side, weight_side, x.size(1), dtype_of(acc),
                              1.0 / split_lo_scale(dtype_of(operand)), current_stream()),
               "he_ce_backward");
  return {d_features, d_weight};
}

at::Tensor l2_workspace(const at::Tensor& like) {
  const int64_t batch = like.size(0);
  return at::empty({l2_workspace_size(batch, like.numel() / batch)},
                   like.options().dtype(at::kDouble));
}

void pgd_step_(const at::Tensor& out, const at::Tensor& start, const at::Tensor& grad,
               const at::Tensor& x_nat, const at::Tensor& eps, const at::Tensor& alpha,
               const at::Tensor& clip_lo, const at::Tensor& clip_hi, std::string norm,
               bool delta) {
  check_pgd_step(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm);
  if (out.numel() == 0) {
    return;
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::cuda::CUDAGuard guard(out.device());
  const bool same = grad.scalar_type() == out.scalar_type() &&
                    x_nat.scalar_type() == out.scalar_type() &&
                    start.scalar_type() == out.scalar_type();
  const at::ScalarType in_dtype = same ? out.scalar_type() : math_dtype(out);
  const at::Tensor s = start.to(in_dtype).contiguous();
  const at::Tensor g = grad.to(in_dtype).contiguous();
  const at::Tensor xn = x_nat.to(in_dtype).contiguous();
  const BudgetTensor e = make_budget(eps, out.sizes());
  const BudgetTensor a = make_budget(alpha, out.sizes());
  const BudgetTensor lo = make_budget(clip_lo, out.sizes());
  const BudgetTensor hi = make_budget(clip_hi, out.sizes());
  const StepArgs args{out.mutable_data_ptr(), dtype_of(out.scalar_type()), s.const_data_ptr(),
                      g.const_data_ptr(), xn.const_data_ptr(), dtype_of(in_dtype), e.budget,
                      a.budget, lo.budget, hi.budget, out.size(0), out.numel() / out.size(0),
                      delta};
  if (norm == "linf") {
    check_launch(pgd_step_linf(args, current_stream()), "pgd_step_");
  } else {
    at::Tensor workspace = l2_workspace(out);
    check_launch(pgd_step_l2(args, workspace.mutable_data_ptr<double>(), current_stream()),
                 "pgd_step_");
  }
}

void random_init_(const at::Tensor& out, const at::Tensor& x_nat, const at::Tensor& eps,
                  const at::Tensor& clip_lo, const at::Tensor& clip_hi, const at::Tensor& seed,
                  std::string norm) {
  check_random_init(out, x_nat, eps, clip_lo, clip_hi, seed, norm);
  if (out.numel() == 0) {
    return;
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor xn = x_nat.contiguous();
  const BudgetTensor e = make_budget(eps, out.sizes());
  const BudgetTensor lo = make_budget(clip_lo, out.sizes());
  const BudgetTensor hi = make_budget(clip_hi, out.sizes());
  const RandomArgs args{out.mutable_data_ptr(), xn.const_data_ptr(), dtype_of(out.scalar_type()),
                        e.budget, lo.budget, hi.budget, seed.const_data_ptr<int64_t>(),
                        out.size(0), out.numel() / out.size(0)};
  if (norm == "linf") {
    check_launch(random_init_linf(args, current_stream()), "random_init_");
  } else {
    at::Tensor workspace = l2_workspace(out);
    check_launch(random_init_l2(args, workspace.mutable_data_ptr<double>(), current_stream()),
                 "random_init_");
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CUDA, m) {
  m.impl("he_ce_forward", &he_ce_forward);
  m.impl("he_ce_backward", &he_ce_backward);
  m.impl("cos_ce_forward", &cos_ce_forward);
  m.impl("pgd_step_", &pgd_step_);
  m.impl("random_init_", &random_init_);
}

}  // namespace heat_fast::cuda
