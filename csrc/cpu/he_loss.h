// The HE cross-entropy's forward and backward in one pass on the CPU, for the autograd kernel
// of heat_fast_C::he_cross_entropy (csrc/autograd.cpp) when the loss is a mean or a sum: every
// row's loss then has the same gradient, known before the backward runs, so each block of rows
// goes on from its loss rows straight to its share of the gradients while it is in cache, in
// the same parallel pass, and the backward only scales them by the incoming gradient.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace heat_fast::cpu {

// The loss's options as the CPU kernels read them (he_loss_kernels.inc).
struct LossOptions {
  double scale, margin, smoothing;
  bool feature_norm, weight_norm;
};

// Whether he_ce_forward_backward takes these shapes: heads whose products are small enough for
// the register-tiled kernels (small_gemm.h) with a bounded number of row blocks; larger ones
// run the forward and backward ops.
bool fits_forward_backward(const at::Tensor& features, const at::Tensor& weight);

// (loss_rows, d_features, d_weight) for plain CPU tensors, with d_features and d_weight the
// gradients of row_grad · Σ loss_rows (row_grad = 1/B for a mean, 1 for a sum) in the inputs'
// dtypes, each undefined where not asked for; loss_rows as he_ce_forward's. Arguments as
// heat_fast_C::he_ce_forward's.
std::tuple<at::Tensor, at::Tensor, at::Tensor> he_ce_forward_backward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
    double scale, double margin, double label_smoothing, bool feature_norm, bool weight_norm,
    double row_grad, bool features_grad, bool weight_grad);

}  // namespace heat_fast::cpu
