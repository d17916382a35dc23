// CUDA kernels of the batched projected step and random start (see launch.h and the CPU twin
// csrc/cpu/pgd_kernels.inc for the math).
//
// L∞ step: one grid-stride pass with vector loads (16 bytes of each input per thread and
// iteration when the sample size and pointers allow). L2 step and L2 random start: blocks
// over fixed chunks of a sample write partial sums to a workspace; later passes add a
// sample's partials in a fixed order (no atomics, so results are deterministic).
#include <algorithm>
#include <cmath>

#include "../philox.h"
#include "common.cuh"

namespace heat_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 2048;  // elements per block in the chunked passes; a multiple of 4

template <typename T>
__device__ __forceinline__ T clamp(T v, T lo, T hi) {
  v = v < lo ? lo : v;  // NaN stays NaN, as with torch.clamp
  return hi < v ? hi : v;
}

template <typename T>
__device__ __forceinline__ T finite_or_zero(T g) {
  return isfinite(g) ? g : T(0);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename in_t, typename out_t, int V>
__global__ void linf_step_kernel(out_t* out, const in_t* x_adv, const in_t* __restrict__ grad,
                                 const in_t* __restrict__ x_nat, const float* __restrict__ eps,
                                 const float* __restrict__ alpha, int64_t numel, int64_t total,
                                 double clip_min, double clip_max) {
  using acc_t = typename Acc<out_t>::type;
  const auto lo = static_cast<acc_t>(clip_min);
  const auto hi = static_cast<acc_t>(clip_max);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < total;
       i += stride) {
    const int64_t b = i / numel;  // V divides numel: one sample per vector
    const acc_t e = eps[b];
    const acc_t a = alpha[b];
    const auto xa = *reinterpret_cast<const Vec<in_t, V>*>(x_adv + i);
    const auto g = *reinterpret_cast<const Vec<in_t, V>*>(grad + i);
    const auto xn = *reinterpret_cast<const Vec<in_t, V>*>(x_nat + i);
    Vec<out_t, V> result;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t gk = to_acc(g.v[k]);
      const acc_t step = gk > 0 ? a : (gk < 0 ? -a : acc_t(0));  // NaN: no step
      const acc_t n = to_acc(xn.v[k]);
      const acc_t x = clamp(static_cast<acc_t>(to_acc(xa.v[k]) + step), n - e, n + e);
      result.v[k] = from_acc<out_t>(clamp(x, lo, hi));
    }
    *reinterpret_cast<Vec<out_t, V>*>(out + i) = result;
  }
}

// Σ_c partial[c] for c < count in a fixed order, computed by warp 0 and returned to all threads.
__device__ double sum_partials(const double* partial, int64_t count, double* slot) {
  if (threadIdx.x < 32) {
    double sum = 0;
    for (int64_t c = threadIdx.x; c < count; c += 32) {
      sum += partial[c];
    }
    sum = warp_reduce(sum, SumOp{});
    if (threadIdx.x == 0) {
      *slot = sum;
    }
  }
  __syncthreads();
  return *slot;
}

struct Chunk {
  int64_t sample, begin, end, chunks;  // [begin, end): offsets inside the sample
};

__device__ __forceinline__ Chunk block_chunk(int64_t numel) {
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  const int64_t sample = blockIdx.x / chunks;
  const int64_t begin = (blockIdx.x - sample * chunks) * kChunk;
  return {sample, begin, begin + kChunk < numel ? begin + kChunk : numel, chunks};
}

// The L2 step; the three passes differ only in what they do with each element.
template <typename in_t, typename out_t>
struct L2Step {
  using acc_t = typename Acc<out_t>::type;
  out_t* out;
  const in_t* x_adv;
  const in_t* grad;
  const in_t* x_nat;
  const float* eps;
  const float* alpha;
  int64_t numel;
  double* g_partial;  // batch × chunks
  double* d_partial;  // batch × chunks
  double clip_min, clip_max;

  __device__ acc_t delta(int64_t i, acc_t a, acc_t g_norm) const {
    const acc_t u = finite_or_zero(to_acc(grad[i])) / g_norm;
    return (to_acc(x_adv[i]) + a * u) - to_acc(x_nat[i]);
  }

  __device__ acc_t norm_of(const double* partial, const Chunk& c, double* slot) const {
    const double sum = sum_partials(partial + c.sample * c.chunks, c.chunks, slot);
    return fmax(static_cast<acc_t>(sqrt(sum)), acc_t(kNormEps));
  }

  __device__ void grad_pass(acc_t* scratch) const {
    const Chunk c = block_chunk(numel);
    const int64_t base = c.sample * numel;
    acc_t sum = 0;
    for (int64_t k = c.begin + threadIdx.x; k < c.end; k += blockDim.x) {
      const acc_t g = finite_or_zero(to_acc(grad[base + k]));
      sum += g * g;
    }
    sum = block_reduce(sum, SumOp{}, acc_t(0), scratch);
    if (threadIdx.x == 0) {
      g_partial[blockIdx.x] = sum;
    }
  }

  __device__ void delta_pass(acc_t* scratch, double* slot) const {
    const Chunk c = block_chunk(numel);
    const int64_t base = c.sample * numel;
    const acc_t g_norm = norm_of(g_partial, c, slot);
    const acc_t a = alpha[c.sample];
    acc_t sum = 0;
    for (int64_t k = c.begin + threadIdx.x; k < c.end; k += blockDim.x) {
      const acc_t d = delta(base + k, a, g_norm);
      sum += d * d;
    }
    sum = block_reduce(sum, SumOp{}, acc_t(0), scratch);
    if (threadIdx.x == 0) {
      d_partial[blockIdx.x] = sum;
    }
  }

  __device__ void write_pass(double* slot) const {
    const Chunk c = block_chunk(numel);
    const int64_t base = c.sample * numel;
    const acc_t g_norm = norm_of(g_partial, c, slot);
    __syncthreads();  // slot is reused
    const acc_t d_norm = norm_of(d_partial, c, slot);
    const acc_t shrink = fmin(acc_t(1), static_cast<acc_t>(eps[c.sample]) / d_norm);
    const acc_t a = alpha[c.sample];
    const auto lo = static_cast<acc_t>(clip_min);
    const auto hi = static_cast<acc_t>(clip_max);
    for (int64_t k = c.begin + threadIdx.x; k < c.end; k += blockDim.x) {
      const int64_t i = base + k;
      const acc_t d = delta(i, a, g_norm);
      out[i] = from_acc<out_t>(clamp(static_cast<acc_t>(to_acc(x_nat[i]) + d * shrink), lo, hi));
    }
  }
};

template <typename in_t, typename out_t>
__global__ void l2_grad_kernel(L2Step<in_t, out_t> step) {
  __shared__ typename Acc<out_t>::type scratch[32];
  step.grad_pass(scratch);
}

template <typename in_t, typename out_t>
__global__ void l2_delta_kernel(L2Step<in_t, out_t> step) {
  __shared__ typename Acc<out_t>::type scratch[32];
  __shared__ double slot;
  step.delta_pass(scratch, &slot);
}

template <typename in_t, typename out_t>
__global__ void l2_write_kernel(L2Step<in_t, out_t> step) {
  __shared__ double slot;
  step.write_pass(&slot);
}

template <typename T>
struct RandomStart {
  using acc_t = typename Acc<T>::type;
  T* out;
  const T* x_nat;
  const float* eps;
  const int64_t* seed;
  int64_t numel;
  double* partial;  // batch × chunks (L2)
  double clip_min, clip_max;

  __device__ void store(int64_t sample, int64_t k, acc_t delta) const {
    const int64_t i = sample * numel + k;
    out[i] = from_acc<T>(clamp(static_cast<acc_t>(to_acc(x_nat[i]) + delta),
                               static_cast<acc_t>(clip_min), static_cast<acc_t>(clip_max)));
  }

  __device__ void linf() const {
    const Chunk c = block_chunk(numel);
    const auto s = static_cast<uint64_t>(*seed);
    const acc_t e = eps[c.sample];
    for (int64_t k = c.begin + 4 * threadIdx.x; k < c.end; k += 4 * blockDim.x) {
      const rng::Words r = rng::element_words(s, c.sample, k / 4);
      for (int lane = 0; lane < 4 && k + lane < c.end; ++lane) {
        store(c.sample, k + lane, static_cast<acc_t>(2.0f * rng::uniform(r.w[lane]) - 1.0f) * e);
      }
    }
  }

  __device__ void l2_sum(acc_t* scratch) const {
    const Chunk c = block_chunk(numel);
    const auto s = static_cast<uint64_t>(*seed);
    acc_t sum = 0;
    for (int64_t k = c.begin + 4 * threadIdx.x; k < c.end; k += 4 * blockDim.x) {
      float n[4];
      rng::normals4(rng::element_words(s, c.sample, k / 4), n);
      for (int lane = 0; lane < 4 && k + lane < c.end; ++lane) {
        sum += static_cast<acc_t>(n[lane]) * n[lane];
      }
    }
    sum = block_reduce(sum, SumOp{}, acc_t(0), scratch);
    if (threadIdx.x == 0) {
      partial[blockIdx.x] = sum;
    }
  }

  __device__ void l2_write(double* slot) const {
    const Chunk c = block_chunk(numel);
    const auto s = static_cast<uint64_t>(*seed);
    const double sum = sum_partials(partial + c.sample * c.chunks, c.chunks, slot);
    const acc_t norm = fmax(static_cast<acc_t>(sqrt(sum)), acc_t(kNormEps));
    const acc_t radius = static_cast<acc_t>(rng::sample_radius(s, c.sample));
    const acc_t factor = radius * static_cast<acc_t>(eps[c.sample]) / norm;
    for (int64_t k = c.begin + 4 * threadIdx.x; k < c.end; k += 4 * blockDim.x) {
      float n[4];
      rng::normals4(rng::element_words(s, c.sample, k / 4), n);
      for (int lane = 0; lane < 4 && k + lane < c.end; ++lane) {
        store(c.sample, k + lane, static_cast<acc_t>(n[lane]) * factor);
      }
    }
  }
};

template <typename T>
__global__ void random_linf_kernel(RandomStart<T> start) {
  start.linf();
}

template <typename T>
__global__ void random_l2_sum_kernel(RandomStart<T> start) {
  __shared__ typename Acc<T>::type scratch[32];
  start.l2_sum(scratch);
}

template <typename T>
__global__ void random_l2_write_kernel(RandomStart<T> start) {
  __shared__ double slot;
  start.l2_write(&slot);
}

// Calls f(in_t{}, out_t{}): in_dtype is out_dtype or its math dtype (see ops.cpp).
template <typename F>
void with_step_types(const StepArgs& a, const F& f) {
  with_type(a.out_dtype, [&](auto out_tag) {
    using out_t = decltype(out_tag);
    if (a.in_dtype == a.out_dtype) {
      f(out_t{}, out_t{});
    } else {
      f(typename Acc<out_t>::type{}, out_t{});
    }
  });
}

int64_t chunks_per_sample(int64_t numel) {
  return (numel + kChunk - 1) / kChunk;
}

bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename in_t, typename out_t, int V>
void launch_linf(const StepArgs& a, cudaStream_t stream) {
  const int64_t total = a.batch * a.numel;
  const int64_t threads_needed = (total / V + kThreads - 1) / kThreads;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(threads_needed, 1 << 20));
  linf_step_kernel<in_t, out_t, V><<<blocks, kThreads, 0, stream>>>(
      static_cast<out_t*>(a.out), static_cast<const in_t*>(a.x_adv),
      static_cast<const in_t*>(a.grad), static_cast<const in_t*>(a.x_nat), a.eps, a.alpha,
      a.numel, total, a.clip_min, a.clip_max);
}

}  // namespace

int64_t l2_workspace_size(int64_t batch, int64_t numel) {
  return 2 * batch * chunks_per_sample(numel);
}

cudaError_t pgd_step_linf(const StepArgs& a, cudaStream_t stream) {
  if (a.batch * a.numel == 0) {
    return cudaSuccess;
  }
  with_step_types(a, [&](auto in_tag, auto out_tag) {
    using in_t = decltype(in_tag);
    using out_t = decltype(out_tag);
    constexpr int V = 16 / sizeof(in_t);
    const bool vector = a.numel % V == 0 && aligned(a.x_adv, sizeof(in_t) * V) &&
                        aligned(a.grad, sizeof(in_t) * V) && aligned(a.x_nat, sizeof(in_t) * V) &&
                        aligned(a.out, sizeof(out_t) * V);
    if (vector) {
      launch_linf<in_t, out_t, V>(a, stream);
    } else {
      launch_linf<in_t, out_t, 1>(a, stream);
    }
  });
  return cudaGetLastError();
}

cudaError_t pgd_step_l2(const StepArgs& a, double* workspace, cudaStream_t stream) {
  if (a.batch * a.numel == 0) {
    return cudaSuccess;
  }
  const int64_t chunks = chunks_per_sample(a.numel);
  const auto blocks = static_cast<unsigned>(a.batch * chunks);
  with_step_types(a, [&](auto in_tag, auto out_tag) {
    using in_t = decltype(in_tag);
    using out_t = decltype(out_tag);
    const L2Step<in_t, out_t> step{
        static_cast<out_t*>(a.out), static_cast<const in_t*>(a.x_adv),
        static_cast<const in_t*>(a.grad), static_cast<const in_t*>(a.x_nat), a.eps, a.alpha,
        a.numel, workspace, workspace + a.batch * chunks, a.clip_min, a.clip_max};
    l2_grad_kernel<<<blocks, kThreads, 0, stream>>>(step);
    l2_delta_kernel<<<blocks, kThreads, 0, stream>>>(step);
    l2_write_kernel<<<blocks, kThreads, 0, stream>>>(step);
  });
  return cudaGetLastError();
}

cudaError_t random_init_linf(const RandomArgs& a, cudaStream_t stream) {
  if (a.batch * a.numel == 0) {
    return cudaSuccess;
  }
  const auto blocks = static_cast<unsigned>(a.batch * chunks_per_sample(a.numel));
  with_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const RandomStart<T> start{static_cast<T*>(a.out), static_cast<const T*>(a.x_nat), a.eps,
                               a.seed, a.numel, nullptr, a.clip_min, a.clip_max};
    random_linf_kernel<<<blocks, kThreads, 0, stream>>>(start);
  });
  return cudaGetLastError();
}

cudaError_t random_init_l2(const RandomArgs& a, double* workspace, cudaStream_t stream) {
  if (a.batch * a.numel == 0) {
    return cudaSuccess;
  }
  const auto blocks = static_cast<unsigned>(a.batch * chunks_per_sample(a.numel));
  with_type(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const RandomStart<T> start{static_cast<T*>(a.out), static_cast<const T*>(a.x_nat), a.eps,
                               a.seed, a.numel, workspace, a.clip_min, a.clip_max};
    random_l2_sum_kernel<<<blocks, kThreads, 0, stream>>>(start);
    random_l2_write_kernel<<<blocks, kThreads, 0, stream>>>(start);
  });
  return cudaGetLastError();
}

}  // namespace heat_fast::cuda
