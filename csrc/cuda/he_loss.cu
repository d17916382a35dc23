// CUDA kernels of the fused HE cosine-margin cross-entropy (see launch.h and the CPU twin
// csrc/cpu/he_loss_kernels.inc for the math). The GEMMs run in cuBLAS through at::mm (ops.cpp);
// these kernels are the per-row passes around them, one block per row, math in `acc_t`.
#include <cmath>

#include "common.cuh"

namespace heat_fast::cuda {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t inverse_norm(acc_t norm, bool enabled) {
  return enabled ? acc_t(1) / fmax(norm, acc_t(kNormEps)) : acc_t(1);
}

template <typename acc_t>
__global__ void row_norms_kernel(const acc_t* __restrict__ x, int64_t cols,
                                 acc_t* __restrict__ norms) {
  __shared__ acc_t scratch[32];
  const acc_t* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  acc_t sum = 0;
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    sum += row[d] * row[d];
  }
  sum = block_reduce(sum, SumOp{}, acc_t(0), scratch);
  if (threadIdx.x == 0) {
    norms[blockIdx.x] = sqrt(sum);
  }
}

// One block per row b; z = buf[b, :] goes dots → logits → exp → dloss/dcos in place.
// p_y − 1 is formed as −Σ_{j≠y} p_j and lse − z_y as log1p(Σ_{j≠y} e^{z_j − z_y}) when z_y is
// the largest logit, so neither cancels when p_y → 1.
template <typename acc_t>
__global__ void ce_rows_kernel(acc_t* __restrict__ buf, const int64_t* __restrict__ target,
                               const acc_t* __restrict__ feature_norms,
                               const acc_t* __restrict__ weight_norms, int64_t classes,
                               LossOptions o, acc_t* __restrict__ loss) {
  __shared__ acc_t scratch[32];
  const int64_t b = blockIdx.x;
  acc_t* z = buf + b * classes;
  const int64_t y = target[b];
  const bool valid = y >= 0 && y < classes;
  const auto s = static_cast<acc_t>(o.scale);
  const auto m = static_cast<acc_t>(o.margin);
  const auto eps = static_cast<acc_t>(o.smoothing);
  const acc_t off_target = eps / static_cast<acc_t>(classes);
  const acc_t inv_x = inverse_norm(feature_norms[b], o.feature_norm);

  acc_t z_max = -INFINITY;
  acc_t z_sum = 0;
  for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
    const acc_t cos_j = z[j] * inv_x * inverse_norm(weight_norms[j], o.weight_norm);
    const acc_t v = s * (j == y ? cos_j - m : cos_j);
    z[j] = v;
    z_max = fmax(z_max, v);
    z_sum += v;
  }
  z_max = block_reduce(z_max, MaxOp{}, acc_t(-INFINITY), scratch);
  z_sum = block_reduce(z_sum, SumOp{}, acc_t(0), scratch);
  const acc_t z_y = valid ? z[y] : acc_t(NAN);
  __syncthreads();  // z[y] is read by every thread before its owner overwrites it

  acc_t rest = 0;
  for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
    const acc_t e = j == y ? acc_t(0) : exp(z[j] - z_max);
    z[j] = e;
    rest += e;
  }
  rest = block_reduce(rest, SumOp{}, acc_t(0), scratch);
  const acc_t sum_exp = exp(z_y - z_max) + rest;
  const acc_t inv_sum = acc_t(1) / sum_exp;

  for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
    z[j] = j == y ? s * (-rest * inv_sum + (eps - off_target)) : s * (z[j] * inv_sum - off_target);
  }
  if (threadIdx.x == 0) {
    const acc_t nll = z_y == z_max ? log1p(rest) : (z_max - z_y) + log(sum_exp);
    const acc_t smooth = z_max + log(sum_exp) - z_sum / static_cast<acc_t>(classes);
    loss[b] = eps != 0 ? (acc_t(1) - eps) * nll + eps * smooth : nll;
  }
}

template <typename acc_t>
__global__ void scaled_grads_kernel(const acc_t* __restrict__ grad_rows,
                                    const acc_t* __restrict__ grad_cos,
                                    const acc_t* __restrict__ feature_norms,
                                    const acc_t* __restrict__ weight_norms, int64_t classes,
                                    int64_t total, bool feature_norm, bool weight_norm,
                                    acc_t* __restrict__ gw, acc_t* __restrict__ gx) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t b = i / classes;
    const acc_t g = grad_rows[b] * grad_cos[i];
    gw[i] = g * inverse_norm(weight_norms[i - b * classes], weight_norm);
    gx[i] = g * inverse_norm(feature_norms[b], feature_norm);
  }
}

// One block per row: g ← (g − x̂ (x̂ · g)) / ‖x‖ when ‖x‖ > eps, else g / eps.
template <typename acc_t>
__global__ void normalize_backward_kernel(acc_t* __restrict__ grad, const acc_t* __restrict__ x,
                                          const acc_t* __restrict__ norms, int64_t cols) {
  __shared__ acc_t scratch[32];
  const int64_t r = blockIdx.x;
  acc_t* g = grad + r * cols;
  const acc_t* row = x + r * cols;
  const acc_t norm = norms[r];
  if (!(norm > acc_t(kNormEps))) {
    for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
      g[d] *= acc_t(1.0 / kNormEps);
    }
    return;
  }
  acc_t dot = 0;
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    dot += row[d] * g[d];
  }
  dot = block_reduce(dot, SumOp{}, acc_t(0), scratch);
  const acc_t inv = acc_t(1) / norm;
  const acc_t along = dot * inv * inv;
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    g[d] = (g[d] - row[d] * along) * inv;
  }
}

unsigned grid_for(int64_t total, int threads) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
}

// Calls f(acc_t{}) with acc_t float or double for dtype kFloat32 or kFloat64.
template <typename F>
void with_acc(DType dtype, const F& f) {
  if (dtype == DType::kFloat64) {
    f(double{});
  } else {
    f(float{});
  }
}

}  // namespace

cudaError_t row_norms(const void* x, int64_t rows, int64_t cols, DType dtype, void* norms,
                      cudaStream_t stream) {
  if (rows == 0) {
    return cudaSuccess;
  }
  with_acc(dtype, [&](auto tag) {
    using acc_t = decltype(tag);
    row_norms_kernel<<<static_cast<unsigned>(rows), threads_for(cols), 0, stream>>>(
        static_cast<const acc_t*>(x), cols, static_cast<acc_t*>(norms));
  });
  return cudaGetLastError();
}

cudaError_t ce_rows(void* buf, const int64_t* target, const void* feature_norms,
                    const void* weight_norms, int64_t batch, int64_t classes,
                    const LossOptions& options, DType dtype, void* loss, cudaStream_t stream) {
  if (batch == 0) {
    return cudaSuccess;
  }
  with_acc(dtype, [&](auto tag) {
    using acc_t = decltype(tag);
    ce_rows_kernel<<<static_cast<unsigned>(batch), threads_for(classes), 0, stream>>>(
        static_cast<acc_t*>(buf), target, static_cast<const acc_t*>(feature_norms),
        static_cast<const acc_t*>(weight_norms), classes, options, static_cast<acc_t*>(loss));
  });
  return cudaGetLastError();
}

cudaError_t scaled_grads(const void* grad_rows, const void* grad_cos, const void* feature_norms,
                         const void* weight_norms, int64_t batch, int64_t classes,
                         bool feature_norm, bool weight_norm, DType dtype, void* gw, void* gx,
                         cudaStream_t stream) {
  const int64_t total = batch * classes;
  if (total == 0) {
    return cudaSuccess;
  }
  constexpr int kThreads = 256;
  with_acc(dtype, [&](auto tag) {
    using acc_t = decltype(tag);
    scaled_grads_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const acc_t*>(grad_rows), static_cast<const acc_t*>(grad_cos),
        static_cast<const acc_t*>(feature_norms), static_cast<const acc_t*>(weight_norms), classes,
        total, feature_norm, weight_norm, static_cast<acc_t*>(gw), static_cast<acc_t*>(gx));
  });
  return cudaGetLastError();
}

cudaError_t normalize_backward(void* grad, const void* x, const void* norms, int64_t rows,
                               int64_t cols, DType dtype, cudaStream_t stream) {
  if (rows == 0) {
    return cudaSuccess;
  }
  with_acc(dtype, [&](auto tag) {
    using acc_t = decltype(tag);
    normalize_backward_kernel<<<static_cast<unsigned>(rows), threads_for(cols), 0, stream>>>(
        static_cast<acc_t*>(grad), static_cast<const acc_t*>(x), static_cast<const acc_t*>(norms),
        cols);
  });
  return cudaGetLastError();
}

}  // namespace heat_fast::cuda
