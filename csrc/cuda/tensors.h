// Tensor-side helpers of the CUDA entry points (ops.cpp, he_loss_chunked_ops.cpp): launch
// checks, dtype codes of launch.h, the current stream and cuBLAS products through at::mm.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include "launch.h"

namespace heat_fast::cuda {

inline void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, "heat_fast_C::", op, ": CUDA kernel launch failed: ",
              cudaGetErrorString(error));
}

inline DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// a · b with float32 output for 16-bit operands (cuBLAS accumulates in float32).
inline at::Tensor product(const at::Tensor& a, const at::Tensor& b, bool sixteen_bit) {
  return sixteen_bit ? at::mm(a, b, at::kFloat) : at::mm(a, b);
}

}  // namespace heat_fast::cuda
