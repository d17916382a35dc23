// CPU kernels of the batched projected step and random start (heat_fast.ops.pgd contract).
//
// L∞ step: one pass reading x_adv, grad, x_nat and writing out. L2 step and L2 random start:
// per-sample sums over fixed-size chunks (so results do not depend on the thread count),
// then one write pass. out may be x_adv itself: every pass reads an element before writing
// it. Math in float32 (float64 for float64 tensors).
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../philox.h"

namespace heat_fast::cpu {
namespace {

constexpr double kNormEps = 1e-12;
constexpr int64_t kGrain = 1 << 15;  // elements per parallel task of a write pass
constexpr int64_t kChunk = 1 << 14;  // elements per partial sum; a multiple of 4 (Philox groups)

template <typename T>
T clamp(T v, T lo, T hi) {
  return std::min(std::max(v, lo), hi);
}

// g when finite, else 0 (g − g is 0 exactly for finite g; written so loops vectorize).
template <typename T>
T finite_or_zero(T g) {
  return g - g == T(0) ? g : T(0);
}

// Calls f(b, begin, end) for each part of the flat range [begin, end) inside one sample.
template <typename F>
void for_each_sample_part(int64_t begin, int64_t end, int64_t numel, const F& f) {
  for (int64_t i = begin; i < end;) {
    const int64_t b = i / numel;
    const int64_t stop = std::min(end, (b + 1) * numel);
    f(b, i, stop);
    i = stop;
  }
}

// sums[b] = Σ_k term(b)(k) over the elements k of sample b, accumulated in float64 per fixed
// chunk, chunks added in order. term(b) returns a functor of the element offset in sample b.
template <typename MakeTerm>
std::vector<double> per_sample_sums(int64_t batch, int64_t numel, const MakeTerm& term) {
  const int64_t chunks = (numel + kChunk - 1) / kChunk;
  std::vector<double> partial(batch * chunks);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::min(numel, kChunk));
  at::parallel_for(0, batch * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks;
      const int64_t k0 = (task % chunks) * kChunk;
      const int64_t k1 = std::min(numel, k0 + kChunk);
      partial[task] = term(b)(k0, k1);
    }
  });
  std::vector<double> sums(batch, 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < chunks; ++c) {
      sums[b] += partial[b * chunks + c];
    }
  }
  return sums;
}

template <typename in_t, typename out_t, typename acc_t>
struct Step {
  out_t* out;
  const in_t* x_adv;
  const in_t* grad;
  const in_t* x_nat;
  const float* eps;
  const float* alpha;
  int64_t batch, numel;
  acc_t lo, hi;

  // x' = clip(min(max(x_adv + α sign(g), x_nat − ε), x_nat + ε)); NaN g → no step.
  void linf() const {
    at::parallel_for(0, batch * numel, kGrain, [&](int64_t begin, int64_t end) {
      for_each_sample_part(begin, end, numel, [&](int64_t b, int64_t i0, int64_t i1) {
        const acc_t e = eps[b];
        const acc_t a = alpha[b];
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) {
          const auto g = static_cast<acc_t>(grad[i]);
          const acc_t step = g > 0 ? a : (g < 0 ? -a : acc_t(0));
          const auto xn = static_cast<acc_t>(x_nat[i]);
          const acc_t x = clamp(static_cast<acc_t>(x_adv[i]) + step, xn - e, xn + e);
          out[i] = static_cast<out_t>(clamp(x, lo, hi));
        }
      });
    });
  }

  // u = g / max(‖g‖, eps); δ = x_adv + α u − x_nat; δ ← δ min(1, ε / max(‖δ‖, eps));
  // x' = clip(x_nat + δ). Non-finite gradient elements count as 0.
  void l2() const {
    const std::vector<double> g_sums = per_sample_sums(batch, numel, [&](int64_t b) {
      const in_t* g = grad + b * numel;
      return [g](int64_t k0, int64_t k1) {
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = k0; k < k1; ++k) {
          const double v = finite_or_zero(static_cast<acc_t>(g[k]));
          sum += v * v;
        }
        return sum;
      };
    });
    std::vector<acc_t> g_norm(batch);
    for (int64_t b = 0; b < batch; ++b) {
      g_norm[b] = std::max(static_cast<acc_t>(std::sqrt(g_sums[b])), acc_t(kNormEps));
    }
    const std::vector<double> d_sums = per_sample_sums(batch, numel, [&](int64_t b) {
      const int64_t base = b * numel;
      const acc_t a = alpha[b];
      const acc_t gn = g_norm[b];
      return [this, base, a, gn](int64_t k0, int64_t k1) {
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t k = base + k0; k < base + k1; ++k) {
          const double d = delta(k, a, gn);
          sum += d * d;
        }
        return sum;
      };
    });
    std::vector<acc_t> shrink(batch);
    for (int64_t b = 0; b < batch; ++b) {
      const acc_t d_norm = std::max(static_cast<acc_t>(std::sqrt(d_sums[b])), acc_t(kNormEps));
      shrink[b] = std::min(acc_t(1), static_cast<acc_t>(eps[b]) / d_norm);
    }
    at::parallel_for(0, batch * numel, kGrain, [&](int64_t begin, int64_t end) {
      for_each_sample_part(begin, end, numel, [&](int64_t b, int64_t i0, int64_t i1) {
        const acc_t a = alpha[b];
        const acc_t gn = g_norm[b];
        const acc_t sh = shrink[b];
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) {
          const acc_t d = delta(i, a, gn);
          out[i] = static_cast<out_t>(clamp(static_cast<acc_t>(x_nat[i]) + d * sh, lo, hi));
        }
      });
    });
  }

  acc_t delta(int64_t i, acc_t a, acc_t g_norm) const {
    const acc_t u = finite_or_zero(static_cast<acc_t>(grad[i])) / g_norm;
    return (static_cast<acc_t>(x_adv[i]) + a * u) - static_cast<acc_t>(x_nat[i]);
  }
};

template <typename out_t, typename acc_t>
struct RandomStart {
  out_t* out;
  const out_t* x_nat;
  const float* eps;
  uint64_t seed;
  int64_t batch, numel;
  acc_t lo, hi;

  // Calls f(b, k, words) for each group of 4 elements k .. k + 3 of each sample, in
  // parallel over fixed chunks.
  template <typename F>
  void for_each_group(const F& f) const {
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::min(numel, kChunk));
    at::parallel_for(0, batch * chunks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks;
        const int64_t k0 = (task % chunks) * kChunk;
        const int64_t k1 = std::min(numel, k0 + kChunk);
        for (int64_t k = k0; k < k1; k += 4) {
          f(b, k, rng::element_words(seed, b, k / 4));
        }
      }
    });
  }

  void store(int64_t b, int64_t k, acc_t delta) const {
    const int64_t i = b * numel + k;
    out[i] = static_cast<out_t>(clamp(static_cast<acc_t>(x_nat[i]) + delta, lo, hi));
  }

  // x_nat + U(−ε, ε) per element, clipped.
  void linf() const {
    for_each_group([&](int64_t b, int64_t k, const rng::Words& r) {
      const acc_t e = eps[b];
      for (int lane = 0; lane < 4 && k + lane < numel; ++lane) {
        store(b, k + lane, static_cast<acc_t>(2.0f * rng::uniform(r.w[lane]) - 1.0f) * e);
      }
    });
  }

  // x_nat + ε r n / ‖n‖ with n standard normal per element and r ~ U(0, 1) per sample.
  void l2() const {
    const std::vector<double> sums = per_sample_sums(batch, numel, [&](int64_t b) {
      return [this, b](int64_t k0, int64_t k1) {
        double sum = 0;
        for (int64_t k = k0; k < k1; k += 4) {
          float n[4];
          rng::normals4(rng::element_words(seed, b, k / 4), n);
          for (int lane = 0; lane < 4 && k + lane < k1; ++lane) {
            sum += static_cast<double>(n[lane]) * n[lane];
          }
        }
        return sum;
      };
    });
    std::vector<acc_t> factor(batch);
    for (int64_t b = 0; b < batch; ++b) {
      const acc_t norm = std::max(static_cast<acc_t>(std::sqrt(sums[b])), acc_t(kNormEps));
      factor[b] = static_cast<acc_t>(rng::sample_radius(seed, b)) * static_cast<acc_t>(eps[b]) / norm;
    }
    for_each_group([&](int64_t b, int64_t k, const rng::Words& r) {
      float n[4];
      rng::normals4(r, n);
      for (int lane = 0; lane < 4 && k + lane < numel; ++lane) {
        store(b, k + lane, static_cast<acc_t>(n[lane]) * factor[b]);
      }
    });
  }
};

// Calls f(out_t{}) for the C++ type of dtype t.
template <typename F>
void dispatch_float(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kHalf: return f(c10::Half{});
    case at::kBFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

void pgd_step_(const at::Tensor& out, const at::Tensor& x_adv, const at::Tensor& grad,
               const at::Tensor& x_nat, const at::Tensor& eps, const at::Tensor& alpha,
               std::string norm, double clip_min, double clip_max) {
  check_pgd_step(out, x_adv, grad, x_nat, eps, alpha, norm, clip_min, clip_max);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const bool same = grad.scalar_type() == out.scalar_type() &&
                    x_nat.scalar_type() == out.scalar_type();
  const at::ScalarType in_dtype = same ? out.scalar_type() : math_dtype(out);
  const at::Tensor xa = x_adv.to(in_dtype).contiguous();
  const at::Tensor g = grad.to(in_dtype).contiguous();
  const at::Tensor xn = x_nat.to(in_dtype).contiguous();
  const at::Tensor e = eps.contiguous();
  const at::Tensor a = alpha.contiguous();
  const int64_t batch = out.size(0);
  const int64_t numel = out.numel() / batch;
  dispatch_float(out.scalar_type(), [&](auto out_tag) {
    using out_t = decltype(out_tag);
    using acc_t = acc_type<out_t>;
    auto run = [&](auto in_tag) {
      using in_t = decltype(in_tag);
      const Step<in_t, out_t, acc_t> step{
          out.mutable_data_ptr<out_t>(), xa.const_data_ptr<in_t>(), g.const_data_ptr<in_t>(),
          xn.const_data_ptr<in_t>(), e.const_data_ptr<float>(), a.const_data_ptr<float>(),
          batch, numel, static_cast<acc_t>(clip_min), static_cast<acc_t>(clip_max)};
      if (norm == "linf") {
        step.linf();
      } else {
        step.l2();
      }
    };
    if (same) {
      run(out_t{});
    } else {
      run(acc_t{});
    }
  });
}

void random_init_(const at::Tensor& out, const at::Tensor& x_nat, const at::Tensor& eps,
                  const at::Tensor& seed, std::string norm, double clip_min, double clip_max) {
  check_random_init(out, x_nat, eps, seed, norm, clip_min, clip_max);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor xn = x_nat.contiguous();
  const at::Tensor e = eps.contiguous();
  const auto seed_value = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  const int64_t batch = out.size(0);
  const int64_t numel = out.numel() / batch;
  dispatch_float(out.scalar_type(), [&](auto tag) {
    using out_t = decltype(tag);
    using acc_t = acc_type<out_t>;
    const RandomStart<out_t, acc_t> start{
        out.mutable_data_ptr<out_t>(), xn.const_data_ptr<out_t>(), e.const_data_ptr<float>(),
        seed_value, batch, numel, static_cast<acc_t>(clip_min), static_cast<acc_t>(clip_max)};
    if (norm == "linf") {
      start.linf();
    } else {
      start.l2();
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("pgd_step_", &pgd_step_);
  m.impl("random_init_", &random_init_);
}

}  // namespace heat_fast::cpu
