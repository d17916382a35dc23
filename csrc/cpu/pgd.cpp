// CPU entry points of the batched projected step (position and delta form) and random start
// (heat_fast.ops.pgd contract). The loops live in pgd_kernels.inc, compiled for the baseline
// instruction set and for AVX2 (isa.h); both give the same results.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../budgets.h"
#include "../checks.h"
#include "../philox.h"
#include "isa.h"

namespace heat_fast::cpu {
using heat_fast::Budget;
#define HEAT_FAST_KERNELS_INC "pgd_kernels.inc"
#include "isa_variants.inc"
#undef HEAT_FAST_KERNELS_INC

namespace {

template <bool kAvx2, typename in_t, typename out_t, typename acc_t, bool kDelta>
using StepOf = std::conditional_t<kAvx2, avx2::Step<in_t, out_t, acc_t, kDelta>,
                                  baseline::Step<in_t, out_t, acc_t, kDelta>>;

template <bool kAvx2, typename... T>
using RandomStartOf =
    std::conditional_t<kAvx2, avx2::RandomStart<T...>, baseline::RandomStart<T...>>;

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

// Elements of one run share every budget's value (budgets' inner sizes divide one another).
int64_t common_run(std::initializer_list<Budget> budgets, int64_t total) {
  int64_t run = std::max<int64_t>(total, 1);
  for (const Budget& b : budgets) run = std::min(run, b.run(total));
  return std::max<int64_t>(run, 1);
}

void pgd_step_(const at::Tensor& out, const at::Tensor& start, const at::Tensor& grad,
               const at::Tensor& x_nat, const at::Tensor& eps, const at::Tensor& alpha,
               const at::Tensor& clip_lo, const at::Tensor& clip_hi, std::string norm,
               bool delta) {
  check_pgd_step(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm);
  if (out.numel() == 0) {
    return;
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const bool same = grad.scalar_type() == out.scalar_type() &&
                    x_nat.scalar_type() == out.scalar_type() &&
                    start.scalar_type() == out.scalar_type();
  const at::ScalarType in_dtype = same ? out.scalar_type() : math_dtype(out);
  const at::Tensor s = start.to(in_dtype).contiguous();
  const at::Tensor g = grad.to(in_dtype).contiguous();
  const at::Tensor xn = x_nat.to(in_dtype).contiguous();
  const BudgetTensor e = make_budget(eps, out.sizes());
  const BudgetTensor a = make_budget(alpha, out.sizes());
  const BudgetTensor lo = make_budget(clip_lo, out.sizes());
  const BudgetTensor hi = make_budget(clip_hi, out.sizes());
  const int64_t batch = out.size(0);
  const int64_t numel = out.numel() / batch;
  const int64_t run = common_run({e.budget, a.budget, lo.budget, hi.budget}, out.numel());
  dispatch_float(out.scalar_type(), [&](auto out_tag) {
    using out_t = decltype(out_tag);
    using acc_t = acc_type<out_t>;
    auto launch = [&](auto in_tag, auto delta_tag) {
      using in_t = decltype(in_tag);
      on_this_cpu([&](auto isa) {
        const StepOf<decltype(isa)::value, in_t, out_t, acc_t, decltype(delta_tag)::value> step{
            out.mutable_data_ptr<out_t>(), s.const_data_ptr<in_t>(), g.const_data_ptr<in_t>(),
            xn.const_data_ptr<in_t>(), e.budget, a.budget, lo.budget, hi.budget, batch, numel,
            run};
        if (norm == "linf") {
          step.linf();
        } else {
          step.l2();
        }
      });
    };
    auto with_delta = [&](auto in_tag) {
      if (delta) {
        launch(in_tag, std::true_type{});
      } else {
        launch(in_tag, std::false_type{});
      }
    };
    if (same) {
      with_delta(out_t{});
    } else {
      with_delta(acc_t{});
    }
  });
}

void random_init_(const at::Tensor& out, const at::Tensor& x_nat, const at::Tensor& eps,
                  const at::Tensor& clip_lo, const at::Tensor& clip_hi, const at::Tensor& seed,
                  std::string norm) {
  check_random_init(out, x_nat, eps, clip_lo, clip_hi, seed, norm);
  if (out.numel() == 0) {
    return;
  }
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor xn = x_nat.contiguous();
  const BudgetTensor e = make_budget(eps, out.sizes());
  const BudgetTensor lo = make_budget(clip_lo, out.sizes());
  const BudgetTensor hi = make_budget(clip_hi, out.sizes());
  const auto seed_value = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  const int64_t batch = out.size(0);
  const int64_t numel = out.numel() / batch;
  dispatch_float(out.scalar_type(), [&](auto tag) {
    using out_t = decltype(tag);
    using acc_t = acc_type<out_t>;
    on_this_cpu([&](auto isa) {
      const RandomStartOf<decltype(isa)::value, out_t, acc_t> start{
          out.mutable_data_ptr<out_t>(), xn.const_data_ptr<out_t>(), e.budget, lo.budget,
          hi.budget, seed_value, batch, numel};
      if (norm == "linf") {
        start.linf();
      } else {
        start.l2();
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("pgd_step_", &pgd_step_);
  m.impl("random_init_", &random_init_);
}

}  // namespace heat_fast::cpu
