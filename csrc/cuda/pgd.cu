// CUDA kernels of the batched projected step and random start (see launch.h and the CPU twin
// csrc/cpu/pgd_kernels.inc for the math).
//
// L∞ step: one grid-stride pass with vector loads (16 bytes of each input per thread and
// iteration when the sample size, the budgets' runs and the pointers allow). L2 step and L2 random start: blocks
// over fixed chunks of a sample write partial sums to a workspace; later passes add a
// sample's partials in a fixed order (no atomics, so results are deterministic).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../philox.h"
#include "common.cuh"

namespace heat_fast::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 2048;  // elements per block in the chunked passes; a multiple of 4

// min(max(v, lo), hi) with NaN in v, lo or hi giving NaN, as torch.minimum/maximum do.
template <typename T>
__device__ __forceinline__ T clamp(T v, T lo, T hi) {
  const T low = v < lo ? lo : v;
  const T r = hi < low ? hi : low;
  return (v != v || lo != lo || hi != hi) ? v + lo + hi : r;
}

// A budget's value at flat element i of sample b (one division for per-sample budgets).
__device__ __forceinline__ float budget_at(const Budget& budget, int64_t i, int64_t b,
                                           int64_t numel) {
  if (!budget.values) return budget.scalar;
  if (budget.inner == numel) return budget.values[b % budget.period];
  return budget.values[(i / budget.inner) % budget.period];
}

template <typename T>
__device__ __forceinline__ T finite_or_zero(T g) {
  return isfinite(g) ? g : T(0);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Position form: x' = clip(min(max(x_adv + α sign(g), x_nat − ε), x_nat + ε)); delta form
// (kDelta, `start` = δ): δ' = clamp(clamp(δ + α sign(g), −ε, ε), lo − x_nat, hi − x_nat).
template <typename in_t, typename out_t, int V, bool kDelta>
__global__ void linf_step_kernel(out_t* out, const in_t* start, const in_t* __restrict__ grad,
                                 const in_t* __restrict__ x_nat, Budget eps, Budget alpha,
                                 Budget lo, Budget hi, int64_t numel, int64_t total) {
  using acc_t = typename Acc<out_t>::type;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * V;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V; i < total;
       i += stride) {
    const int64_t b = i / numel;  // V divides the budgets' common run: one value per vector
    const acc_t e = budget_at(eps, i, b, numel);
    const acc_t a = budget_at(alpha, i, b, numel);
    const acc_t l = budget_at(lo, i, b, numel);
    const acc_t h = budget_at(hi, i, b, numel);
    const auto s = *reinterpret_cast<const Vec<in_t, V>*>(start + i);
    const auto g = *reinterpret_cast<const Vec<in_t, V>*>(grad + i);
    const auto xn = *reinterpret_cast<const Vec<in_t, V>*>(x_nat + i);
    Vec<out_t, V> result;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const acc_t gk = to_acc(g.v[k]);
      const acc_t step = gk > 0 ? a : (gk < 0 ? -a : acc_t(0));  // NaN: no step
      const acc_t n = to_acc(xn.v[k]);
      const acc_t moved = static_cast<acc_t>(to_acc(s.v[k]) + step);
      result.v[k] = from_acc<out_t>(kDelta ? clamp(clamp(moved, -e, e), l - n, h - n)
                                           : clamp(clamp(moved, n - e, n + e), l, h));
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

// The L2 step; the three passes differ only in what they do with each element. Sums of
// squares are formed in float64, so they cannot overflow for float32 inputs.
template <typename in_t, typename out_t, bool kDelta>
struct L2Step {
  using acc_t = typename Acc<out_t>::type;
  out_t* out;
  const in_t* start;
  const in_t* grad;
  const in_t* x_nat;
  Budget eps, alpha, lo, hi;
  int64_t numel;
  double* g_partial;  // batch × chunks
  double* d_partial;  // batch × chunks

  // δ before the projection: start + α g/‖g‖, minus x_nat in position form.
  __device__ acc_t delta(int64_t i, acc_t a, acc_t g_norm) const {
    const acc_t u = finite_or_zero(to_acc(grad[i])) / g_norm;
    const acc_t moved = to_acc(start[i]) + a * u;
    return kDelta ? moved : moved - to_acc(x_nat[i]);
  }

  __device__ acc_t norm_of(const double* partial, const Chunk& c, double* slot) const {
    const double sum = sum_partials(partial + c.sample * c.chunks, c.chunks, slot);
    return fmax(static_cast<acc_t>(sqrt(sum)), acc_t(kNormEps));
  }

  __device__ void grad_pass(double* scratch) const {
    const Chunk c = block_chunk(numel);
    const int64_t base = c.sample * numel;
    double sum = 0;
    for (int64_t k = c.begin + threadIdx.x; k < c.end; k += blockDim.x) {
      const double g = finite_or_zero(to_acc(grad[base + k]));
      sum += g * g;
    }
    sum = block_reduce(sum, SumOp{}, 0.0, scratch);
    if (threadIdx.x == 0) {
      g_partial[blockIdx.x] = sum;
    }
  }

  __device__ void delta_pass(double* scratch, double* slot) const {
    const Chunk c = block_chunk(numel);
    const int64_t base = c.sample * numel;
    const acc_t g_norm = norm_of(g_partial, c, slot);
    const acc_t a = budget_at(alpha, base, c.sample, numel);
    double sum = 0;
    for (int64_t k = c.begin + threadIdx.x; k < c.end; k += blockDim.x) {
      const double d = delta(base + k, a, g_norm);
      sum += d * d;
    }
    sum = block_reduce(sum, SumOp{}, 0.0, scratch);
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
    const acc_t shrink =
        fmin(acc_t(1), static_cast<acc_t>(budget_at(eps, base, c.sample, numel)) / d_norm);
    const acc_t a = budget_at(alpha, base, c.sample, numel);
    for (int64_t k = c.begin + threadIdx.x; k < c.end; k += blockDim.x) {
      const int64_t i = base + k;
      const acc_t d = delta(i, a, g_norm) * shrink;
      const acc_t n = to_acc(x_nat[i]);
      const acc_t l = budget_at(lo, i, c.sample, numel);
      const acc_t h = budget_at(hi, i, c.sample, numel);
      out[i] = from_acc<out_t>(kDelta ? clamp(d, l - n, h - n)
                                      : clamp(static_cast<acc_t>(n + d), l, h));
    }
  }
};

template <typename in_t, typename out_t, bool kDelta>
__global__ void l2_grad_kernel(L2Step<in_t, out_t, kDelta> step) {
  __shared__ double scratch[32];
  step.grad_pass(scratch);
}

template <typename in_t, typename out_t, bool kDelta>
__global__ void l2_delta_kernel(L2Step<in_t, out_t, kDelta> step) {
  __shared__ double scratch[32];
  __shared__ double slot;
  step.delta_pass(scratch, &slot);
}

template <typename in_t, typename out_t, bool kDelta>
__global__ void l2_write_kernel(L2Step<in_t, out_t, kDelta> step) {
  __shared__ double slot;
  step.write_pass(&slot);
}

template <typename T>
struct RandomStart {
  using acc_t = typename Acc<T>::type;
  T* out;
  const T* x_nat;
  Budget eps, lo, hi;
  const int64_t* seed;
  int64_t numel;
  double* partial;  // batch × chunks (L2)

  __device__ void store(int64_t sample, int64_t k, acc_t delta) const {
    const int64_t i = sample * numel + k;
    out[i] = from_acc<T>(clamp(static_cast<acc_t>(to_acc(x_nat[i]) + delta),
                               static_cast<acc_t>(budget_at(lo, i, sample, numel)),
                               static_cast<acc_t>(budget_at(hi, i, sample, numel))));
  }

  __device__ void linf() const {
    const Chunk c = block_chunk(numel);
    const auto s = static_cast<uint64_t>(*seed);
    for (int64_t k = c.begin + 4 * threadIdx.x; k < c.end; k += 4 * blockDim.x) {
      const rng::Words r = rng::element_words(s, c.sample, k / 4);
      for (int lane = 0; lane < 4 && k + lane < c.end; ++lane) {
        const int64_t i = c.sample * numel + k + lane;
        const auto e = static_cast<acc_t>(budget_at(eps, i, c.sample, numel));
        store(c.sample, k + lane, static_cast<acc_t>(2.0f * rng::uniform(r.w[lane]) - 1.0f) * e);
      }
    }
  }

  __device__ void l2_sum(double* scratch) const {
    const Chunk c = block_chunk(numel);
    const auto s = static_cast<uint64_t>(*seed);
    double sum = 0;
    for (int64_t k = c.begin + 4 * threadIdx.x; k < c.end; k += 4 * blockDim.x) {
      float n[4];
      rng::normals4(rng::element_words(s, c.sample, k / 4), n);
      for (int lane = 0; lane < 4 && k + lane < c.end; ++lane) {
        sum += static_cast<double>(n[lane]) * n[lane];
      }
    }
    sum = block_reduce(sum, SumOp{}, 0.0, scratch);
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
    const auto e = static_cast<acc_t>(budget_at(eps, c.sample * numel, c.sample, numel));
    const acc_t factor = radius * e / norm;
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
  __shared__ double scratch[32];
  start.l2_sum(scratch);
}

template <typename T>
__global__ void random_l2_write_kernel(RandomStart<T> start) {
  __shared__ double slot;
  start.l2_write(&slot);
}

// Calls f(in_t{}, out_t{}, delta_tag): in_dtype is out_dtype or its math dtype (see ops.cpp).
template <typename F>
void with_step_types(const StepArgs& a, const F& f) {
  with_type(a.out_dtype, [&](auto out_tag) {
    using out_t = decltype(out_tag);
    const auto with_delta = [&](auto in_tag) {
      if (a.delta) {
        f(in_tag, out_tag, std::true_type{});
      } else {
        f(in_tag, out_tag, std::false_type{});
      }
    };
    if (a.in_dtype == a.out_dtype) {
      with_delta(out_t{});
    } else {
      with_delta(typename Acc<out_t>::type{});
    }
  });
}

int64_t chunks_per_sample(int64_t numel) {
  return (numel + kChunk - 1) / kChunk;
}

bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

template <typename in_t, typename out_t, int V, bool kDelta>
void launch_linf(const StepArgs& a, cudaStream_t stream) {
  const int64_t total = a.batch * a.numel;
  const int64_t threads_needed = (total / V + kThreads - 1) / kThreads;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(threads_needed, 1 << 20));
  linf_step_kernel<in_t, out_t, V, kDelta><<<blocks, kThreads, 0, stream>>>(
      static_cast<out_t*>(a.out), static_cast<const in_t*>(a.start),
      static_cast<const in_t*>(a.grad), static_cast<const in_t*>(a.x_nat), a.eps, a.alpha,
      a.lo, a.hi, a.numel, total);
}

// Elements of one run share every budget's value (their inner sizes divide one another).
int64_t common_run(const StepArgs& a) {
  const int64_t total = a.batch * a.numel;
  return std::min({a.eps.run(total), a.alpha.run(total), a.lo.run(total), a.hi.run(total)});
}

}  // namespace

int64_t l2_workspace_size(int64_t batch, int64_t numel) {
  return 2 * batch * chunks_per_sample(numel);
}

cudaError_t pgd_step_linf(const StepArgs& a, cudaStream_t stream) {
  if (a.batch * a.numel == 0) {
    return cudaSuccess;
  }
  with_step_types(a, [&](auto in_tag, auto out_tag, auto delta_tag) {
    using in_t = decltype(in_tag);
    using out_t = decltype(out_tag);
    constexpr bool kDelta = decltype(delta_tag)::value;
    constexpr int V = 16 / sizeof(in_t);
    const bool vector = a.numel % V == 0 && common_run(a) % V == 0 &&
                        aligned(a.start, sizeof(in_t) * V) && aligned(a.grad, sizeof(in_t) * V) &&
                        aligned(a.x_nat, sizeof(in_t) * V) && aligned(a.out, sizeof(out_t) * V);
    if (vector) {
      launch_linf<in_t, out_t, V, kDelta>(a, stream);
    } else {
      launch_linf<in_t, out_t, 1, kDelta>(a, stream);
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
  with_step_types(a, [&](auto in_tag, auto out_tag, auto delta_tag) {
    using in_t = decltype(in_tag);
    using out_t = decltype(out_tag);
    constexpr bool kDelta = decltype(delta_tag)::value;
    const L2Step<in_t, out_t, kDelta> step{
        static_cast<out_t*>(a.out), static_cast<const in_t*>(a.start),
        static_cast<const in_t*>(a.grad), static_cast<const in_t*>(a.x_nat), a.eps, a.alpha,
        a.lo, a.hi, a.numel, workspace, workspace + a.batch * chunks};
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
                               a.lo, a.hi, a.seed, a.numel, nullptr};
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
                               a.lo, a.hi, a.seed, a.numel, workspace};
    random_l2_sum_kernel<<<blocks, kThreads, 0, stream>>>(start);
    random_l2_write_kernel<<<blocks, kThreads, 0, stream>>>(start);
  });
  return cudaGetLastError();
}

}  // namespace heat_fast::cuda
