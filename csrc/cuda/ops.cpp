// CUDA entry points of the heat_fast_C ops (compiled only in HEAT_FAST_WITH_CUDA builds):
// argument checks, allocation, cuBLAS GEMMs through at::mm, and the launchers of launch.h on
// the current stream. Nothing here synchronizes with the host.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../checks.h"
#include "launch.h"

namespace heat_fast::cuda {
namespace {

void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, "heat_fast_C::", op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(error));
}

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

at::Tensor norms_or_ones(const at::Tensor& x, bool enabled) {
  if (!enabled) {
    return at::ones({x.size(0)}, x.options());
  }
  at::Tensor norms = at::empty({x.size(0)}, x.options());
  check_launch(row_norms(x.const_data_ptr(), x.size(0), x.size(1), dtype_of(x.scalar_type()),
                         norms.mutable_data_ptr(), current_stream()),
               "he_ce_forward");
  return norms;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm) {
  check_he_forward(features, weight, target);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::cuda::CUDAGuard guard(features.device());
  const at::ScalarType acc = math_dtype(features);
  const at::Tensor x = features.to(acc).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  const at::Tensor labels = target.contiguous();
  at::Tensor dots = at::mm(x, w.t());  // becomes grad_cos
  at::Tensor feature_norms = norms_or_ones(x, feature_norm);
  at::Tensor weight_norms = norms_or_ones(w, weight_norm);
  at::Tensor loss = at::empty({x.size(0)}, x.options());
  const LossOptions options{scale, margin, label_smoothing, feature_norm, weight_norm};
  check_launch(ce_rows(dots.mutable_data_ptr(), labels.const_data_ptr<int64_t>(),
                       feature_norms.const_data_ptr(), weight_norms.const_data_ptr(),
                       dots.size(0), dots.size(1), options, dtype_of(acc),
                       loss.mutable_data_ptr(), current_stream()),
               "he_ce_forward");
  return {loss, dots, feature_norms, weight_norms};
}

std::tuple<at::Tensor, at::Tensor> he_ce_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& grad_cos, const at::Tensor& feature_norms, const at::Tensor& weight_norms,
    bool feature_norm, bool weight_norm) {
  check_he_backward(grad_rows, features, weight, grad_cos, feature_norms, weight_norms);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::cuda::CUDAGuard guard(features.device());
  const at::ScalarType acc = math_dtype(features);
  const at::Tensor x = features.to(acc).contiguous();
  const at::Tensor w = weight.to(acc).contiguous();
  const at::Tensor g_rows = grad_rows.to(acc).contiguous();
  const at::Tensor g_cos = grad_cos.to(acc).contiguous();
  const at::Tensor x_norms = feature_norms.to(acc).contiguous();
  const at::Tensor w_norms = weight_norms.to(acc).contiguous();
  at::Tensor gw = at::empty_like(g_cos);
  at::Tensor gx = at::empty_like(g_cos);
  check_launch(scaled_grads(g_rows.const_data_ptr(), g_cos.const_data_ptr(),
                            x_norms.const_data_ptr(), w_norms.const_data_ptr(), g_cos.size(0),
                            g_cos.size(1), feature_norm, weight_norm, dtype_of(acc),
                            gw.mutable_data_ptr(), gx.mutable_data_ptr(), current_stream()),
               "he_ce_backward");
  at::Tensor d_features = at::mm(gw, w);
  at::Tensor d_weight = at::mm(gx.t(), x);
  if (feature_norm) {
    check_launch(normalize_backward(d_features.mutable_data_ptr(), x.const_data_ptr(),
                                    x_norms.const_data_ptr(), x.size(0), x.size(1),
                                    dtype_of(acc), current_stream()),
                 "he_ce_backward");
  }
  if (weight_norm) {
    check_launch(normalize_backward(d_weight.mutable_data_ptr(), w.const_data_ptr(),
                                    w_norms.const_data_ptr(), w.size(0), w.size(1),
                                    dtype_of(acc), current_stream()),
                 "he_ce_backward");
  }
  return {d_features.to(features.scalar_type()), d_weight.to(weight.scalar_type())};
}

at::Tensor l2_workspace(const at::Tensor& like) {
  const int64_t batch = like.size(0);
  return at::empty({l2_workspace_size(batch, like.numel() / batch)},
                   like.options().dtype(at::kDouble));
}

void pgd_step_(const at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& grad,
               const at::Tensor& x_nat, const at::Tensor& eps, const at::Tensor& alpha,
               std::string norm, double clip_min, double clip_max) {
  check_pgd_step(out, x_adv, grad, x_nat, eps, alpha, norm, clip_min, clip_max);
  if (out.numel() == 0) {
    return;
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::cuda::CUDAGuard guard(out.device());
  const bool same = grad.scalar_type() == out.scalar_type() &&
                    x_nat.scalar_type() == out.scalar_type();
  const at::ScalarType in_dtype = same ? out.scalar_type() : math_dtype(out);
  const at::Tensor xa = x_adv.to(in_dtype).contiguous();
  const at::Tensor g = grad.to(in_dtype).contiguous();
  const at::Tensor xn = x_nat.to(in_dtype).contiguous();
  const at::Tensor e = eps.contiguous();
  const at::Tensor a = alpha.contiguous();
  const StepArgs args{out.mutable_data_ptr(), dtype_of(out.scalar_type()), xa.const_data_ptr(),
                      g.const_data_ptr(), xn.const_data_ptr(), dtype_of(in_dtype),
                      e.const_data_ptr<float>(), a.const_data_ptr<float>(), out.size(0),
                      out.numel() / out.size(0), clip_min, clip_max};
  if (norm == "linf") {
    check_launch(pgd_step_linf(args, current_stream()), "pgd_step_");
  } else {
    at::Tensor workspace = l2_workspace(out);
    check_launch(pgd_step_l2(args, workspace.mutable_data_ptr<double>(), current_stream()),
                 "pgd_step_");
  }
}

void random_init_(const at::Tensor& out, const at::Tensor& x_nat, const at::Tensor& eps,
                  const at::Tensor& seed, std::string norm, double clip_min, double clip_max) {
  check_random_init(out, x_nat, eps, seed, norm, clip_min, clip_max);
  if (out.numel() == 0) {
    return;
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor xn = x_nat.contiguous();
  const at::Tensor e = eps.contiguous();
  const RandomArgs args{out.mutable_data_ptr(), xn.const_data_ptr(), dtype_of(out.scalar_type()),
                        e.const_data_ptr<float>(), seed.const_data_ptr<int64_t>(), out.size(0),
                        out.numel() / out.size(0), clip_min, clip_max};
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
  m.impl("pgd_step_", &pgd_step_);
  m.impl("random_init_", &random_init_);
}

}  // namespace heat_fast::cuda
