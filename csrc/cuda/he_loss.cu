// CUDA kernels of the fused HE cosine-margin cross-entropy (see launch.h and the CPU twin
// csrc/cpu/he_loss_kernels.inc for the math). The GEMMs run in cuBLAS through at::mm
// (ops.cpp); these kernels are the passes around them, math in `acc_t`.
//
// 16-bit inputs (one dtype) keep their storage: the forward product multiplies them as they are
// (exact products, float32 accumulation and output) and the backward products multiply them by
// the float32 gradient operand split into a 16-bit high part and a scaled 16-bit low part
// (hi + lo·2⁻ᵏ carries 2 × 16-bit mantissas, far below the rounding of the 16-bit gradient).
#undef NDEBUG  // the label-range check of ce_rows_kernel is a device assert in every build
#include <cassert>
#include <cmath>
#include <type_traits>

#include "common.cuh"

namespace heat_fast::cuda {
namespace {

// Blocks [0, x_rows) take the rows of x, the others the rows of w; a disabled side writes 1.
template <typename in_t>
__global__ void row_norms_kernel(const in_t* __restrict__ x, int64_t x_rows, bool x_enabled,
                                 const in_t* __restrict__ w, bool w_enabled, int64_t cols,
                                 typename Acc<in_t>::type* __restrict__ x_norms,
                                 typename Acc<in_t>::type* __restrict__ w_norms) {
  using acc_t = typename Acc<in_t>::type;
  __shared__ acc_t scratch[32];
  const bool is_x = blockIdx.x < x_rows;
  const int64_t r = is_x ? blockIdx.x : blockIdx.x - x_rows;
  acc_t* norm = (is_x ? x_norms : w_norms) + r;
  if (!(is_x ? x_enabled : w_enabled)) {
    if (threadIdx.x == 0) {
      *norm = acc_t(1);
    }
    return;
  }
  const in_t* row = (is_x ? x : w) + r * cols;
  acc_t sum = 0;
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    const acc_t v = to_acc(row[d]);
    sum += v * v;
  }
  sum = block_reduce(sum, SumOp{}, acc_t(0), scratch);
  if (threadIdx.x == 0) {
    *norm = sqrt(sum);
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
  assert(y >= 0 && y < classes && "heat_fast: target label outside [0, C)");
  const auto s = static_cast<acc_t>(o.scale);
  const auto m = static_cast<acc_t>(o.margin);
  const auto eps = static_cast<acc_t>(o.smoothing);
  const acc_t off_target = eps / static_cast<acc_t>(classes);
  const acc_t inv_x = feature_norms ? inverse_norm(feature_norms[b]) : acc_t(1);

  acc_t z_max = -INFINITY;
  acc_t z_sum = 0;
  for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
    const acc_t cos_j = z[j] * inv_x * (weight_norms ? inverse_norm(weight_norms[j]) : acc_t(1));
    const acc_t v = s * (j == y ? cos_j - m : cos_j);
    z[j] = v;
    z_max = fmax(z_max, v);
    z_sum += v;
  }
  z_max = block_reduce(z_max, MaxOp{}, acc_t(-INFINITY), scratch);
  z_sum = block_reduce(z_sum, SumOp{}, acc_t(0), scratch);
  const acc_t z_y = z[y];
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

// The power of two at or above v (1 for 0, inf or NaN): a scale that changes no mantissa bit.
__device__ __forceinline__ float power_of_two_above(float v) {
  return v > 0 && isfinite(v) ? exp2f(ceilf(log2f(v))) : 1.0f;
}

// One block: scales[0] ≥ max_j 1/‖W_j‖ and scales[1] ≥ max_b |g_b|/‖x_b‖, powers of two, so
// that the float16 operands P/scales[0] and Q/scales[1] stay within |dL/dcos| ≤ s·(1 + ε).
template <typename acc_t>
__global__ void operand_scales_kernel(const acc_t* __restrict__ grad_rows,
                                      const acc_t* __restrict__ feature_norms,
                                      const acc_t* __restrict__ weight_norms, int64_t batch,
                                      int64_t classes, float* __restrict__ scales) {
  __shared__ acc_t scratch[32];
  acc_t p_max = 0;
  for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
    p_max = fmax(p_max, inverse_norm(weight_norms[j]));
  }
  acc_t q_max = 0;
  for (int64_t b = threadIdx.x; b < batch; b += blockDim.x) {
    q_max = fmax(q_max, fabs(grad_rows[b]) * inverse_norm(feature_norms[b]));
  }
  p_max = block_reduce(p_max, MaxOp{}, acc_t(0), scratch);
  q_max = block_reduce(q_max, MaxOp{}, acc_t(0), scratch);
  if (threadIdx.x == 0) {
    scales[0] = power_of_two_above(static_cast<float>(p_max));
    scales[1] = power_of_two_above(static_cast<float>(q_max));
  }
}

// P = dL/dcos ⊘ ‖W‖ and Q = dL/dcos ⊙ (g ⊘ ‖x‖), each divided by its scale, stored as op_t;
// with SPLIT also the low parts (v − hi)·2ᵏ.
template <typename acc_t, typename op_t, bool SPLIT>
__global__ void grad_operands_kernel(const acc_t* __restrict__ grad_rows,
                                     const acc_t* __restrict__ grad_cos,
                                     const acc_t* __restrict__ feature_norms,
                                     const acc_t* __restrict__ weight_norms, int64_t classes,
                                     int64_t total, const float* __restrict__ scales,
                                     acc_t lo_scale, op_t* __restrict__ p_hi,
                                     op_t* __restrict__ p_lo, op_t* __restrict__ q_hi,
                                     op_t* __restrict__ q_lo) {
  const acc_t p_div = scales ? acc_t(1) / static_cast<acc_t>(scales[0]) : acc_t(1);
  const acc_t q_div = scales ? acc_t(1) / static_cast<acc_t>(scales[1]) : acc_t(1);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int64_t b = i / classes;
    const acc_t g = grad_cos[i];
    const acc_t p = g * inverse_norm(weight_norms[i - b * classes]) * p_div;
    const acc_t q = g * grad_rows[b] * inverse_norm(feature_norms[b]) * q_div;
    const op_t p_high = from_acc<op_t>(p);
    const op_t q_high = from_acc<op_t>(q);
    p_hi[i] = p_high;
    q_hi[i] = q_high;
    if constexpr (SPLIT) {
      p_lo[i] = from_acc<op_t>((p - to_acc(p_high)) * lo_scale);
      q_lo[i] = from_acc<op_t>((q - to_acc(q_high)) * lo_scale);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t load_as(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kFloat16: return to_acc(static_cast<const __half*>(p)[i]);
    case DType::kBFloat16: return to_acc(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::kFloat64: return static_cast<acc_t>(static_cast<const double*>(p)[i]);
    default: return static_cast<acc_t>(static_cast<const float*>(p)[i]);
  }
}

template <typename acc_t>
__device__ __forceinline__ void store_as(DType t, void* p, int64_t i, acc_t v) {
  switch (t) {
    case DType::kFloat16:
      static_cast<__half*>(p)[i] = from_acc<__half>(static_cast<float>(v));
      break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[i] = from_acc<__nv_bfloat16>(static_cast<float>(v));
      break;
    case DType::kFloat64: static_cast<double*>(p)[i] = static_cast<double>(v); break;
    default: static_cast<float*>(p)[i] = static_cast<float>(v);
  }
}

// One output row r of a side: v = (hi + lo·lo_weight)·row_mult·scale, then
// out = (v − x̂(x̂·v))/‖x‖ (v/eps where ‖x‖ ≤ eps) when the side is normalized, else v; stored
// in the side's output dtype.
template <typename acc_t>
__device__ __forceinline__ void finalize_row(const GradSide& side, int64_t r, int64_t cols,
                                             acc_t lo_weight, acc_t* scratch) {
  const int64_t base = r * cols;
  const auto* hi = static_cast<const acc_t*>(side.hi) + base;
  const auto* lo = side.lo ? static_cast<const acc_t*>(side.lo) + base : nullptr;
  acc_t mult = side.row_mult ? static_cast<const acc_t*>(side.row_mult)[r] : acc_t(1);
  mult *= side.scale ? static_cast<acc_t>(*side.scale) : acc_t(1);
  const auto value = [&](int64_t d) { return (lo ? hi[d] + lo[d] * lo_weight : hi[d]) * mult; };
  if (!side.normalize) {
    for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
      store_as(side.out_dtype, side.out, base + d, value(d));
    }
    return;
  }
  const acc_t norm = static_cast<const acc_t*>(side.norms)[r];
  const acc_t inv = inverse_norm(norm);
  acc_t dot = 0;
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    dot += load_as<acc_t>(side.x_dtype, side.x, base + d) * value(d);
  }
  dot = block_reduce(dot, SumOp{}, acc_t(0), scratch);
  const acc_t shift = norm > acc_t(kNormEps) ? dot * inv * inv : acc_t(0);
  const bool exact_zero = cols == 1 && norm > acc_t(kNormEps);  // x̂ = ±1: nothing remains
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    const acc_t x = load_as<acc_t>(side.x_dtype, side.x, base + d);
    store_as(side.out_dtype, side.out, base + d,
             exact_zero ? acc_t(0) : (value(d) - x * shift) * inv);
  }
}

// One block per output row: blocks [0, features.rows) for d_features, the rest for d_weight.
template <typename acc_t>
__global__ void finalize_grads_kernel(const GradSide features, const GradSide weight,
                                      int64_t cols, acc_t lo_weight) {
  __shared__ acc_t scratch[32];
  if (blockIdx.x < features.rows) {
    finalize_row(features, blockIdx.x, cols, lo_weight, scratch);
  } else {
    finalize_row(weight, blockIdx.x - features.rows, cols, lo_weight, scratch);
  }
}

}  // namespace

double split_lo_scale(DType operand) {
  return operand == DType::kFloat16 ? 2048.0 : 256.0;  // 2^(mantissa bits + 1)
}

cudaError_t row_norms(const void* x, int64_t x_rows, bool x_enabled, const void* w,
                      int64_t w_rows, bool w_enabled, int64_t cols, DType in_dtype, void* x_norms,
                      void* w_norms, cudaStream_t stream) {
  with_type(in_dtype, [&](auto tag) {
    using in_t = decltype(tag);
    using acc_t = typename Acc<in_t>::type;
    row_norms_kernel<<<static_cast<unsigned>(x_rows + w_rows), threads_for(cols), 0, stream>>>(
        static_cast<const in_t*>(x), x_rows, x_enabled, static_cast<const in_t*>(w), w_enabled,
        cols, static_cast<acc_t*>(x_norms), static_cast<acc_t*>(w_norms));
  });
  return cudaGetLastError();
}

cudaError_t ce_rows(void* buf, const int64_t* target, const void* feature_norms,
                    const void* weight_norms, int64_t batch, int64_t classes,
                    const LossOptions& options, DType dtype, void* loss, cudaStream_t stream) {
  with_acc(dtype, [&](auto tag) {
    using acc_t = decltype(tag);
    ce_rows_kernel<<<static_cast<unsigned>(batch), threads_for(classes), 0, stream>>>(
        static_cast<acc_t*>(buf), target, static_cast<const acc_t*>(feature_norms),
        static_cast<const acc_t*>(weight_norms), classes, options, static_cast<acc_t*>(loss));
  });
  return cudaGetLastError();
}

cudaError_t grad_operands(const GradOperands& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  with_acc(a.acc, [&](auto tag) {
    using acc_t = decltype(tag);
    const auto* g_rows = static_cast<const acc_t*>(a.grad_rows);
    const auto* x_norms = static_cast<const acc_t*>(a.feature_norms);
    const auto* w_norms = static_cast<const acc_t*>(a.weight_norms);
    if (a.scales) {
      operand_scales_kernel<<<1, 1024, 0, stream>>>(g_rows, x_norms, w_norms, a.batch,
                                                     a.classes, a.scales);
    }
    const int64_t total = a.batch * a.classes;
    const auto launch = [&](auto op_tag, auto split) {
      using op_t = decltype(op_tag);
      grad_operands_kernel<acc_t, op_t, decltype(split)::value>
          <<<grid_for(total, kThreads), kThreads, 0, stream>>>(
              g_rows, static_cast<const acc_t*>(a.grad_cos), x_norms, w_norms, a.classes, total,
              a.scales, static_cast<acc_t>(split_lo_scale(a.operand)),
              static_cast<op_t*>(a.p_hi), static_cast<op_t*>(a.p_lo), static_cast<op_t*>(a.q_hi),
              static_cast<op_t*>(a.q_lo));
    };
    if (a.operand == DType::kFloat16) {
      launch(__half{}, std::true_type{});
    } else if (a.operand == DType::kBFloat16) {
      launch(__nv_bfloat16{}, std::true_type{});
    } else {
      launch(acc_t{}, std::false_type{});
    }
  });
  return cudaGetLastError();
}

cudaError_t finalize_grads(const GradSide& features, const GradSide& weight, int64_t cols,
                           DType acc, double lo_weight, cudaStream_t stream) {
  with_acc(acc, [&](auto tag) {
    using acc_t = decltype(tag);
    finalize_grads_kernel<acc_t>
        <<<static_cast<unsigned>(features.rows + weight.rows), threads_for(cols), 0, stream>>>(
            features, weight, cols, static_cast<acc_t>(lo_weight));
  });
  return cudaGetLastError();
}

}  // namespace heat_fast::cuda
