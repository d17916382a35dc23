// CPU entry points of the max-pool with kernel = stride (heat_fast.ops.max_pool2d contract):
// the forward returns each window's maximum and, as one byte, which element of the window it
// was; the backward writes every input-gradient element once from those bytes. The loops live
// in max_pool_kernels.inc, compiled for the baseline instruction set and for AVX2 (isa.h);
// both give the same results.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "dtypes.h"
#include "isa.h"

namespace heat_fast::cpu {
#define HEAT_FAST_KERNELS_INC "max_pool_kernels.inc"
#include "isa_variants.inc"
#undef HEAT_FAST_KERNELS_INC

namespace {

constexpr int64_t kMaxKernel = 16;  // window indices fit one byte

template <bool kAvx2, typename T, typename acc_t>
using MaxPoolOf = std::conditional_t<kAvx2, avx2::MaxPool<T, acc_t>, baseline::MaxPool<T, acc_t>>;

// channels_last when x is laid out so (and not also plainly contiguous), else NCHW.
bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_kernel(int64_t kernel) {
  TORCH_CHECK_VALUE(kernel >= 1 && kernel <= kMaxKernel, "kernel must be in [1, ", kMaxKernel,
                    "], got ", kernel);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& x_in, int64_t kernel) {
  check_float(x_in, "x");
  check_kernel(kernel);
  TORCH_CHECK_VALUE(x_in.dim() == 4 && x_in.size(2) >= kernel && x_in.size(3) >= kernel,
                    "x must have shape (N, C, H, W) with H and W at least kernel = ", kernel,
                    ", got ", x_in.sizes());
  const bool channels_last = is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous(format_of(channels_last));
  const int64_t n = x.size(0), c = x.size(1), height = x.size(2), width = x.size(3);
  const auto options = x.options().memory_format(format_of(channels_last));
  const std::vector<int64_t> pooled{n, c, height / kernel, width / kernel};
  at::Tensor out = at::empty(pooled, options);
  at::Tensor argmax = at::empty(pooled, options.dtype(at::kByte));
  if (out.numel() == 0) {
    return {out, argmax};
  }
  dispatch_float_math(x.scalar_type(), [&](auto elem, auto acc) {
    using T = decltype(elem);
    using acc_t = decltype(acc);
    on_this_cpu([&](auto avx2) {
      MaxPoolOf<decltype(avx2)::value, T, acc_t>::forward(
          out.mutable_data_ptr<T>(), argmax.mutable_data_ptr<uint8_t>(), x.const_data_ptr<T>(),
          n, c, height, width, kernel, channels_last);
    });
  });
  return {out, argmax};
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_in, const at::Tensor& argmax_in,
                               int64_t kernel, int64_t height, int64_t width,
                               bool channels_last) {
  check_float(grad_in, "grad");
  check_kernel(kernel);
  TORCH_CHECK_TYPE(argmax_in.scalar_type() == at::kByte, "argmax must be uint8, got ",
                   argmax_in.scalar_type());
  TORCH_CHECK_VALUE(argmax_in.dim() == 4 && height >= kernel && width >= kernel &&
                        argmax_in.size(2) == height / kernel && argmax_in.size(3) == width / kernel,
                    "argmax must have shape (N, C, ", height / kernel, ", ", width / kernel,
                    ") for a ", height, "×", width, " input and kernel ", kernel, ", got ",
                    argmax_in.sizes());
  TORCH_CHECK_VALUE(grad_in.sizes() == argmax_in.sizes(), "grad must have argmax's shape ",
                    argmax_in.sizes(), ", got ", grad_in.sizes());
  check_on(grad_in, "grad", argmax_in.device());
  const at::MemoryFormat format = format_of(channels_last);
  const at::Tensor grad = grad_in.contiguous(format);
  const at::Tensor argmax = argmax_in.contiguous(format);
  const int64_t n = grad.size(0), c = grad.size(1);
  at::Tensor dx = at::empty({n, c, height, width}, grad.options().memory_format(format));
  if (dx.numel() == 0) {
    return dx;
  }
  dispatch_float_math(grad.scalar_type(), [&](auto elem, auto acc) {
    using T = decltype(elem);
    using acc_t = decltype(acc);
    on_this_cpu([&](auto avx2) {
      MaxPoolOf<decltype(avx2)::value, T, acc_t>::backward(
          dx.mutable_data_ptr<T>(), grad.const_data_ptr<T>(), argmax.const_data_ptr<uint8_t>(), n,
          c, height, width, kernel, channels_last);
    });
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("max_pool2d", &max_pool2d);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
}

}  // namespace heat_fast::cpu
