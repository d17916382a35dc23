// CUDA kernels of the large-class HE loss (see launch_chunked.h; the CPU twin is
// csrc/cpu/he_loss_chunked.cpp): the passes around the cuBLAS products of one chunk of
// classes. Math in acc_t (float, or double for float64 inputs); every reduction runs in a
// fixed order, so results do not depend on scheduling.
#undef NDEBUG  // the label-range check of chunk_loss_kernel is a device assert in every build
#include <cassert>
#include <cmath>

#include "../row_loss.h"
#include "common.cuh"
#include "launch_chunked.h"

namespace heat_fast::cuda {
namespace {

// The logit z = s · (cos − m · 1[target]) of one dot, as the CPU kernels round it.
template <typename acc_t>
__device__ __forceinline__ acc_t logit(acc_t dot, acc_t inv_x, acc_t inv_w, acc_t s, acc_t m,
                                       bool is_target) {
  const acc_t cos = dot * inv_x * inv_w;
  return is_target ? s * (cos - m) : s * cos;
}

// One block per batch row: the chunk's largest logit and Σ z, then Σ e^{z − z_max} over its
// non-target logits with the new maximum, folded into the row's statistics.
template <typename acc_t>
__global__ void chunk_stats_kernel(const acc_t* __restrict__ dots, int64_t count, int64_t first,
                                   const int64_t* __restrict__ target,
                                   const acc_t* __restrict__ feature_norms,
                                   const acc_t* __restrict__ weight_norms, LossOptions o,
                                   acc_t* __restrict__ z_max, acc_t* __restrict__ rest,
                                   acc_t* __restrict__ z_sum, acc_t* __restrict__ z_y) {
  __shared__ acc_t scratch[32];
  const int64_t b = blockIdx.x;
  const acc_t* row = dots + b * count;
  const int64_t local_y = target[b] - first;
  const acc_t inv_x = inverse_norm(feature_norms[b]);
  const auto s = static_cast<acc_t>(o.scale);
  const auto m = static_cast<acc_t>(o.margin);
  acc_t top = -INFINITY;
  acc_t total = 0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const acc_t z = logit(row[j], inv_x, inverse_norm(weight_norms[first + j]), s, m, j == local_y);
    top = fmax(top, z);
    total += z;
  }
  top = fmax(block_reduce(top, MaxOp{}, acc_t(-INFINITY), scratch), z_max[b]);
  total = block_reduce(total, SumOp{}, acc_t(0), scratch);
  acc_t sum = 0;
  for (int64_t j = threadIdx.x; j < count; j += blockDim.x) {
    if (j != local_y) {
      sum += exp(logit(row[j], inv_x, inverse_norm(weight_norms[first + j]), s, m, false) - top);
    }
  }
  sum = block_reduce(sum, SumOp{}, acc_t(0), scratch);
  if (threadIdx.x == 0) {
    const acc_t previous = z_max[b];
    rest[b] = (previous == top ? rest[b] : rest[b] * exp(previous - top)) + sum;
    z_max[b] = top;
    z_sum[b] += total;
    if (local_y >= 0 && local_y < count) {
      z_y[b] = logit(row[local_y], inv_x, inverse_norm(weight_norms[target[b]]), s, m, true);
    }
  }
}

template <typename acc_t>
__global__ void chunk_loss_kernel(const acc_t* __restrict__ z_max, const acc_t* __restrict__ rest,
                                  const acc_t* __restrict__ z_sum, const acc_t* __restrict__ z_y,
                                  const int64_t* __restrict__ target, int64_t batch,
                                  int64_t classes, LossOptions o, acc_t* __restrict__ loss,
                                  acc_t* __restrict__ lse, acc_t* __restrict__ target_grad) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) {
    return;
  }
  const int64_t y = target[b];
  assert(y >= 0 && y < classes && "heat_fast: target label outside [0, C)");
  const RowLoss<acc_t> row(z_max[b], z_y[b], rest[b], z_sum[b], classes, o.scale, o.smoothing);
  loss[b] = row.loss;
  lse[b] = row.lse;
  target_grad[b] = row.target_grad;
}

template <typename acc_t, typename op_t>
__global__ void chunk_grad_operand_kernel(const acc_t* __restrict__ dots, int64_t count,
                                          int64_t first, int64_t total,
                                          const int64_t* __restrict__ target,
                                          const acc_t* __restrict__ grad_rows,
                                          const acc_t* __restrict__ lse,
                                          const acc_t* __restrict__ feature_norms,
                                          const acc_t* __restrict__ weight_norms, acc_t s,
                                          acc_t off_target, op_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t b = i / count;
    const int64_t j = i - b * count;
    acc_t h = 0;
    if (target[b] != first + j) {
      const acc_t inv_x = inverse_norm(feature_norms[b]);
      const acc_t inv_w = inverse_norm(weight_norms[first + j]);
      const acc_t z = logit(dots[i], inv_x, inv_w, s, acc_t(0), false);
      h = grad_rows[b] * s * (exp(z - lse[b]) - off_target) * inv_x * inv_w;
    }
    out[i] = from_acc<op_t>(h);
  }
}

// Blocks [0, batch): u[b] += h_b W[y_b] where y_b is in the chunk; blocks [batch, batch + count):
// v[j] += Σ_{b: y_b = first + j} h_b x[b], the batch rows in order.
template <typename acc_t, typename op_t>
__global__ void chunk_target_terms_kernel(TargetTerms a) {
  const auto* target = a.target;
  const auto* g = static_cast<const acc_t*>(a.grad_rows);
  const auto* t_grad = static_cast<const acc_t*>(a.target_grad);
  const auto* x_norms = static_cast<const acc_t*>(a.feature_norms);
  const auto* w_norms = static_cast<const acc_t*>(a.weight_norms);
  const auto h = [&](int64_t b) {
    return g[b] * t_grad[b] * inverse_norm(x_norms[b]) * inverse_norm(w_norms[target[b]]);
  };
  const auto* x = static_cast<const op_t*>(a.x);
  const auto* w = static_cast<const op_t*>(a.w);
  if (blockIdx.x < a.batch) {
    const int64_t b = blockIdx.x;
    const int64_t j = target[b] - a.first;
    if (j < 0 || j >= a.count) {
      return;
    }
    const acc_t hb = h(b);
    acc_t* u = static_cast<acc_t*>(a.u) + b * a.dim;
    for (int64_t d = threadIdx.x; d < a.dim; d += blockDim.x) {
      u[d] += hb * to_acc(w[j * a.dim + d]);
    }
    return;
  }
  const int64_t j = blockIdx.x - a.batch;
  acc_t* v = static_cast<acc_t*>(a.v) + j * a.dim;
  for (int64_t b = 0; b < a.batch; ++b) {
    if (target[b] != a.first + j) {
      continue;
    }
    const acc_t hb = h(b);
    for (int64_t d = threadIdx.x; d < a.dim; d += blockDim.x) {
      v[d] += hb * to_acc(x[b * a.dim + d]);
    }
  }
}

// Calls f(acc_t{}, op_t{}) for the math dtype and the products' operand dtype: the math dtype
// itself, or bf16 (with float32 math).
template <typename F>
void with_operand(DType acc, DType operand, const F& f) {
  if (operand == DType::kBFloat16) {
    f(float{}, __nv_bfloat16{});
  } else if (acc == DType::kFloat64) {
    f(double{}, double{});
  } else {
    f(float{}, float{});
  }
}

}  // namespace

cudaError_t chunk_stats(const void* dots, int64_t batch, int64_t count, int64_t first,
                        const int64_t* target, const void* feature_norms,
                        const void* weight_norms, const LossOptions& options, DType acc,
                        const RowStats& stats, cudaStream_t stream) {
  with_acc(acc, [&](auto tag) {
    using acc_t = decltype(tag);
    chunk_stats_kernel<acc_t><<<static_cast<unsigned>(batch), threads_for(count), 0, stream>>>(
        static_cast<const acc_t*>(dots), count, first, target,
        static_cast<const acc_t*>(feature_norms), static_cast<const acc_t*>(weight_norms),
        options, static_cast<acc_t*>(stats.z_max), static_cast<acc_t*>(stats.rest),
        static_cast<acc_t*>(stats.z_sum), static_cast<acc_t*>(stats.z_y));
  });
  return cudaGetLastError();
}

cudaError_t chunk_loss(const RowStats& stats, const int64_t* target, int64_t batch,
                       int64_t classes, const LossOptions& options, DType acc, void* loss,
                       void* lse, void* target_grad, cudaStream_t stream) {
  constexpr int kThreads = 128;
  with_acc(acc, [&](auto tag) {
    using acc_t = decltype(tag);
    chunk_loss_kernel<acc_t><<<grid_for(batch, kThreads), kThreads, 0, stream>>>(
        static_cast<const acc_t*>(stats.z_max), static_cast<const acc_t*>(stats.rest),
        static_cast<const acc_t*>(stats.z_sum), static_cast<const acc_t*>(stats.z_y), target,
        batch, classes, options, static_cast<acc_t*>(loss), static_cast<acc_t*>(lse),
        static_cast<acc_t*>(target_grad));
  });
  return cudaGetLastError();
}

cudaError_t chunk_grad_operand(const GradOperand& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = a.batch * a.count;
  with_operand(a.acc, a.operand, [&](auto acc_tag, auto op_tag) {
    using acc_t = decltype(acc_tag);
    using op_t = decltype(op_tag);
    chunk_grad_operand_kernel<acc_t, op_t><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        static_cast<const acc_t*>(a.dots), a.count, a.first, total, a.target,
        static_cast<const acc_t*>(a.grad_rows), static_cast<const acc_t*>(a.lse),
        static_cast<const acc_t*>(a.feature_norms), static_cast<const acc_t*>(a.weight_norms),
        static_cast<acc_t>(a.scale), static_cast<acc_t>(a.smoothing / a.classes),
        static_cast<op_t*>(a.out));
  });
  return cudaGetLastError();
}

cudaError_t chunk_target_terms(const TargetTerms& a, cudaStream_t stream) {
  with_operand(a.acc, a.operand, [&](auto acc_tag, auto op_tag) {
    using acc_t = decltype(acc_tag);
    using op_t = decltype(op_tag);
    chunk_target_terms_kernel<acc_t, op_t>
        <<<static_cast<unsigned>(a.batch + a.count), threads_for(a.dim), 0, stream>>>(a);
  });
  return cudaGetLastError();
}

}  // namespace heat_fast::cuda
