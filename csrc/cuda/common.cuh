// Device helpers shared by the heat_fast CUDA kernels: dtype conversion and block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch.h"

namespace heat_fast::cuda {

constexpr double kNormEps = 1e-12;  // F.normalize's eps on the norm

// The math type of a storage type: double for double, float otherwise.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Round to nearest even, as torch's .to(dtype) does.
template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// 1 / max(norm, eps): the factor of F.normalize.
template <typename acc_t>
__device__ __forceinline__ acc_t inverse_norm(acc_t norm) {
  return acc_t(1) / fmax(norm, acc_t(kNormEps));
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a + b;
  }
};

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Reduces v over the block (blockDim.x a multiple of 32, at most 1024) and returns the result
// to every thread. `scratch` is __shared__ T[32]; the call begins and ends with a barrier.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T identity, T* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : identity;
    v = warp_reduce(v, op);
    if (lane == 0) {
      scratch[0] = v;
    }
  }
  __syncthreads();
  return scratch[0];
}

// Calls f(T{}) with the CUDA storage type T of dtype.
template <typename F>
void with_type(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
}

// Blocks of `threads` for a grid-stride loop over `total` elements (at most 2^20).
inline unsigned grid_for(int64_t total, int threads) {
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

// Threads per block for a row of n elements (about 4 per thread): a power of two in [32, 1024].
inline int threads_for(int64_t n) {
  int threads = 32;
  while (threads < 1024 && threads * 4 < n) {
    threads <<= 1;
  }
  return threads;
}

}  // namespace heat_fast::cuda
