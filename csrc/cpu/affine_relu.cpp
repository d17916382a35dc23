// CPU entry points of the per-channel affine + ReLU (heat_fast.ops.affine_relu contract):
// eval-mode BatchNorm and the ReLU after it in one pass, forward and backward. The loops live
// in affine_relu_kernels.inc, compiled for the baseline instruction set, AVX2 and AVX-512
// (isa.h picks the widest the CPU has); all give the same results.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../checks.h"
#include "dtypes.h"
#include "isa.h"

namespace heat_fast::cpu {
namespace {

namespace baseline {
#include "affine_relu_kernels.inc"
}  // namespace baseline

#ifdef HEAT_FAST_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#include "affine_relu_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

// AVX-512 (with BW for the 16-bit lanes of bfloat16 and float16); no FMA contraction, so
// every variant rounds alike.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
#pragma GCC optimize("fp-contract=off")
namespace avx512 {
#include "affine_relu_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

// Calls f(Kernels{}) with the AffineReLU<T, acc_t> of the widest variant this CPU runs.
template <typename T, typename acc_t, typename F>
void with_kernels(const F& f) {
  switch (cpu_isa()) {
#ifdef HEAT_FAST_AVX2_KERNELS
    case Isa::kAvx512: return f(avx512::AffineReLU<T, acc_t>{});
    case Isa::kAvx2: return f(avx2::AffineReLU<T, acc_t>{});
#endif
    default: return f(baseline::AffineReLU<T, acc_t>{});
  }
}

// How a tensor is walked: `runs` runs of `inner` elements (NCHW planes, channels = size(1)),
// or, channels_last, `runs` rows of `channels` elements.
struct Walk {
  at::MemoryFormat format;
  bool channels_last;
  int64_t runs, inner, channels;
};

Walk walk_of(const at::Tensor& t) {
  const int64_t channels = t.size(1);
  if (!t.is_contiguous() && t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return {at::MemoryFormat::ChannelsLast, true, t.numel() / std::max<int64_t>(channels, 1), 1,
            channels};
  }
  const int64_t inner = t.numel() / std::max<int64_t>(t.size(0) * channels, 1);
  return {at::MemoryFormat::Contiguous, false, t.size(0) * channels, inner, channels};
}

void check_channel_vector(const at::Tensor& v, const char* name, const at::Tensor& x) {
  const at::ScalarType want = math_dtype(x);
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == x.size(1), name, " must have shape (",
                    x.size(1), ",), one value per channel of x, got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == want, name, " must be ", want, " for x of ",
                   x.scalar_type(), ", got ", v.scalar_type());
  check_on(v, name, x.device());
}

void check_x(const at::Tensor& x, const char* name) {
  check_float(x, name);
  TORCH_CHECK_VALUE(x.dim() >= 2, name, " must have shape (N, C, ...), got ", x.sizes());
}

at::Tensor affine_relu(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& shift) {
  check_x(x_in, "x");
  check_channel_vector(scale, "scale", x_in);
  check_channel_vector(shift, "shift", x_in);
  const Walk walk = walk_of(x_in);
  const at::Tensor x = x_in.contiguous(walk.format);
  at::Tensor y = at::empty_like(x, walk.format);
  if (x.numel() == 0) {
    return y;
  }
  const at::Tensor a = scale.contiguous(), b = shift.contiguous();
  dispatch_float_math(x.scalar_type(), [&](auto elem, auto acc) {
    using T = decltype(elem);
    using acc_t = decltype(acc);
    with_kernels<T, acc_t>([&](auto kernels) {
      decltype(kernels)::forward(
          y.mutable_data_ptr<T>(), x.const_data_ptr<T>(), a.const_data_ptr<acc_t>(),
          b.const_data_ptr<acc_t>(), walk.runs, walk.inner, walk.channels, walk.channels_last);
    });
  });
  return y;
}

at::Tensor affine_relu_backward(const at::Tensor& grad_in, const at::Tensor& y_in,
                                const at::Tensor& scale) {
  check_x(y_in, "y");
  TORCH_CHECK_VALUE(grad_in.sizes() == y_in.sizes(), "grad must have y's shape ", y_in.sizes(),
                    ", got ", grad_in.sizes());
  check_on(grad_in, "grad", y_in.device());
  check_channel_vector(scale, "scale", y_in);
  const Walk walk = walk_of(y_in);
  const at::Tensor y = y_in.contiguous(walk.format);
  const at::Tensor grad = grad_in.to(y.scalar_type()).contiguous(walk.format);
  at::Tensor dx = at::empty_like(y, walk.format);
  if (y.numel() == 0) {
    return dx;
  }
  const at::Tensor a = scale.contiguous();
  dispatch_float_math(y.scalar_type(), [&](auto elem, auto acc) {
    using T = decltype(elem);
    using acc_t = decltype(acc);
    with_kernels<T, acc_t>([&](auto kernels) {
      decltype(kernels)::backward(
          dx.mutable_data_ptr<T>(), grad.const_data_ptr<T>(), y.const_data_ptr<T>(),
          a.const_data_ptr<acc_t>(), walk.runs, walk.inner, walk.channels, walk.channels_last);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("affine_relu", &affine_relu);
  m.impl("affine_relu_backward", &affine_relu_backward);
}

}  // namespace heat_fast::cpu
