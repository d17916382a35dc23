// The loss of one row of the HE cross-entropy and its target's dloss/dcos, from the statistics
// of its margin logits z_j = s (cos_j − m 1[j = y]): shared by the chunked CPU and CUDA kernels
// (cpu/he_loss_chunked.cpp, cuda/he_loss_chunked.cu); the same math as the unchunked row loops
// (cpu/he_loss_kernels.inc ce_rows, cuda/he_loss.cu ce_rows_kernel).
//   z_max = max_j z_j, z_y the target's, rest = Σ_{j≠y} e^{z_j − z_max}, z_sum = Σ_j z_j (read
//   only with label smoothing ε);
//   loss = (1 − ε)(lse − z_y) + ε (lse − z_sum / C),  lse = z_max + log(e^{z_y − z_max} + rest),
//   target_grad = s (p_y − (1 − ε) − ε / C), formed as s (−rest / Σe + ε − ε / C),
// with lse − z_y = log1p(rest) when z_y is the largest logit, so neither cancels when p_y → 1.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define HEAT_FAST_HOST_DEVICE __host__ __device__
#else
#define HEAT_FAST_HOST_DEVICE
#endif

namespace heat_fast {

template <typename acc_t>
struct RowLoss {
  acc_t loss, target_grad, inv_sum, lse;

  HEAT_FAST_HOST_DEVICE RowLoss(acc_t z_max, acc_t z_y, acc_t rest, acc_t z_sum, int64_t classes,
                                double scale, double smoothing) {
    const auto s = static_cast<acc_t>(scale);
    const auto eps = static_cast<acc_t>(smoothing);
    const acc_t sum_exp = std::exp(z_y - z_max) + rest;
    const acc_t log_sum = std::log(sum_exp);
    inv_sum = acc_t(1) / sum_exp;
    lse = z_max + log_sum;
    const acc_t nll = z_y == z_max ? std::log1p(rest) : (z_max - z_y) + log_sum;
    const acc_t smooth = z_max + log_sum - z_sum / static_cast<acc_t>(classes);
    loss = eps != 0 ? (acc_t(1) - eps) * nll + eps * smooth : nll;
    target_grad = s * (-rest * inv_sum + (eps - eps / static_cast<acc_t>(classes)));
  }
};

}  // namespace heat_fast
