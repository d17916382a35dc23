// CPU kernels of the large-class HE loss, heat_fast_C::he_ce_chunked_forward and
// he_ce_chunked_backward (contract in heat_fast/ops/he_loss_chunked.py): the classes in chunks,
// never a batch × classes buffer.
//
// Forward: the norms, then per chunk of classes its dots with every batch row (one product),
// its logits and an online log-sum-exp per batch row (he_loss_chunked_kernels.inc).
// Backward: per chunk the same dots again, the operand H = dL/dcos ⊘ ‖x‖ ⊘ ‖W‖ of both gradient
// products, u += Hᵀ W_c (the features' gradient, before its normalization backward, summed over
// chunks) and v = H X (the chunk's rows of the weight gradient, finished at once). The target
// class's entry of H is left out of the products and added in the math dtype, so the largest
// entry (it carries −Σ_{j≠y} p_j) is never rounded to an operand's precision.
//
// Parallel work is cut by the shapes alone (tasks.h), so results do not depend on the thread
// count: chunks are grouped into slices of consecutive chunks, one task each, whose per-row
// statistics (forward) or shares of u (backward, one B × D share per slice) are merged in slice
// order. One parallel region per call: finer, per-chunk rounds of tasks proved several times
// slower on a shared 2-core machine, each round waiting for a descheduled thread. Memory beyond
// the inputs and gradients: per running task one chunk's block (chunk × B), its packed operands
// and weight rows in float32; per backward slice a share of u.
//
// Products: bfloat16 inputs (both, D even) on a CPU with AVX512_BF16 multiply in bf16 with
// float32 accumulation (bf16_gemm.h; H is rounded to bf16 for its two products); everything
// else in float32 (float64 for float64 inputs) on torch's BLAS, 16-bit weight rows converted
// one chunk at a time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../chunked_checks.h"
#include "../no_autocast.h"
#include "../row_loss.h"
#include "bf16_gemm.h"
#include "blas.h"
#include "he_loss.h"
#include "isa.h"
#include "tasks.h"

namespace heat_fast::cpu {

#define HEAT_FAST_KERNELS_INC "he_loss_chunked_kernels.inc"
#include "isa_variants.inc"

// These passes also run 16 lanes wide on AVX-512 CPUs, with FMA (the products they feed
// already differ between instruction sets: BLAS and the bf16 kernels choose by the CPU).
#ifdef HEAT_FAST_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#define HEAT_FAST_VECTOR_BYTES 64
namespace avx512 {
#include HEAT_FAST_KERNELS_INC
}  // namespace avx512
#undef HEAT_FAST_VECTOR_BYTES
#pragma GCC pop_options
#else
namespace avx512 = avx2;
#endif
#undef HEAT_FAST_KERNELS_INC

namespace {

// A chunk's block of products holds about this many values (1 MiB of float32): cache-sized
// for the passes over it, large enough for efficient products.
constexpr int64_t kChunkValues = int64_t(1) << 18;
constexpr int64_t kChunkStep = 96;  // whole tiles of the bf16 products (12 rows, 32 columns)
constexpr int64_t kMinChunk = kChunkStep;
constexpr int64_t kMaxChunk = 42 * kChunkStep;  // about 4096
// Slices: the forward keeps per-row statistics per slice (32 slices), the backward a B × D share
// of u per slice: 8, or up to 16 while the shares stay within 1/16 of a B × C float32 buffer
// (C ≥ 16 · 16 · D), for a finer balance between threads.
constexpr int64_t kForwardSlices = 32;

int64_t backward_slices(int64_t classes, int64_t dim) {
  return std::clamp<int64_t>(classes / (16 * dim), 8, 16);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The chunks and slices of the classes, from the shapes (and a requested chunk) alone.
struct Plan {
  Plan(int64_t batch, int64_t classes, int64_t requested, int64_t max_slices) {
    const int64_t automatic = std::clamp(ceil_div(kChunkValues / batch, kChunkStep) * kChunkStep,
                                         kMinChunk, kMaxChunk);
    chunk = std::min(requested > 0 ? requested : automatic, classes);
    chunks = ceil_div(classes, chunk);
    slices = std::min(chunks, max_slices);
    this->classes = classes;
  }

  int64_t first_chunk(int64_t slice) const { return slice * chunks / slices; }
  int64_t begin(int64_t c) const { return c * chunk; }
  int64_t count(int64_t c) const { return std::min(chunk, classes - c * chunk); }

  int64_t chunk, chunks, slices, classes;
};

// The inputs as the passes read them.
struct Inputs {
  Inputs(const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target,
         bool feature_norm, bool weight_norm)
      : acc(math_dtype(features)),
        weight(weight.contiguous()),
        x(features.to(acc).contiguous()),
        labels(target.contiguous()),
        batch(features.size(0)),
        classes(weight.size(0)),
        dim(features.size(1)),
        feature_norm(feature_norm),
        weight_norm(weight_norm),
        bf16(features.scalar_type() == at::kBFloat16 &&
             weight.scalar_type() == at::kBFloat16 && dim % 2 == 0 && bf16::available()) {}

  at::ScalarType acc;
  at::Tensor weight, x, labels;
  int64_t batch, classes, dim;
  bool feature_norm, weight_norm;
  bool bf16;  // the products run on bf16_gemm.h
};

// The inverse norms 1 / max(‖·‖, eps) (1 where the normalization is off), in acc_t.
template <typename acc_t>
std::vector<acc_t> inverses(const at::Tensor& norms, bool enabled) {
  const at::Tensor n = norms.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* data = n.const_data_ptr<acc_t>();
  std::vector<acc_t> out(n.numel());
  for (int64_t i = 0; i < n.numel(); ++i) {
    out[i] = enabled ? acc_t(1) / std::max(data[i], acc_t(1e-12)) : acc_t(1);
  }
  return out;
}

// A task's buffers, reused from chunk to chunk.
template <typename acc_t>
struct Workspace {
  std::vector<acc_t> block, rows, row, v;
  bf16::Packed a, b;
};

// Rows [first, first + count) of the weight in acc_t: in place, or converted into `rows`.
template <typename acc_t>
const acc_t* weight_rows(const Inputs& in, int64_t first, int64_t count,
                         std::vector<acc_t>& rows) {
  if (in.weight.scalar_type() == c10::CppTypeToScalarType<acc_t>::value) {
    return in.weight.const_data_ptr<acc_t>() + first * in.dim;
  }
  rows.resize(count * in.dim);
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::from_blob(rows.data(), {count, in.dim}, options).copy_(in.weight.narrow(0, first, count));
  return rows.data();
}

// out (rows × cols, row stride ldo) += a · b on torch's BLAS.
template <typename acc_t>
void add_product(RowMajor<acc_t> a, RowMajor<acc_t> b, acc_t* out, int64_t ldo, int64_t rows,
                 int64_t cols, int64_t inner) {
  at::Tensor result = as_tensor<acc_t>({out, ldo}, rows, cols);
  at::addmm_out(result, result, as_tensor(a, rows, inner), as_tensor(b, inner, cols));
}

// The products of a chunk in the math dtype on torch's BLAS. `w` points at the chunk's weight
// rows in the math dtype (weight_rows).
template <typename acc_t>
struct BlasProducts {
  static constexpr bool kReadsRows = true;

  // out (rows × B) = W[first : first + rows] Xᵀ.
  void dots(int64_t, int64_t rows, const acc_t* w, acc_t* out) const {
    matmul<acc_t>({w, in.dim}, {x(), in.dim, true}, out, in.batch, rows, in.batch, in.dim);
  }

  // v (rows × D) = H_rows X, for rows of the chunk's operand H (ld B).
  void weight_grad(const acc_t* h, int64_t rows, acc_t* v, Workspace<acc_t>&) const {
    matmul<acc_t>({h, in.batch}, {x(), in.dim}, v, in.dim, rows, in.dim, in.batch);
  }

  // u (B × D) += Hᵀ W_c for the chunk's operand H (count × B).
  void feature_grad(int64_t, int64_t count, const acc_t* h, const acc_t* w, acc_t* u,
                    Workspace<acc_t>&) const {
    add_product<acc_t>({h, in.batch, true}, {w, in.dim}, u, in.dim, in.batch, in.dim, count);
  }

  const acc_t* x() const { return in.x.const_data_ptr<acc_t>(); }

  const Inputs& in;
};

// The products of a chunk of bf16 inputs on the bf16 kernels (float32 results), reading the
// weight rows as stored.
struct Bf16Products {
  static constexpr bool kReadsRows = false;

  explicit Bf16Products(const Inputs& in) : in(in) {
    const auto* x16 = in_x16();
    bf16::pack(x16, in.dim, false, in.batch, in.dim, bf16::kPanelCols, x_by_row);
    bf16::pack(x16, in.dim, true, in.dim, in.batch, bf16::kPanelCols, x_by_column);
  }

  void dots(int64_t first, int64_t rows, const float*, float* out) const {
    bf16::gemm(bf16::Left::rows(w16() + first * in.dim, in.dim, rows, in.dim), x_by_row, out,
               in.batch, false);
  }

  void weight_grad(const float* h, int64_t rows, float* v, Workspace<float>& ws) const {
    bf16::pack(h, in.batch, false, rows, in.batch, bf16::kTileRows, ws.a);
    bf16::gemm(bf16::Left::packed(ws.a), x_by_column, v, in.dim, false);
  }

  void feature_grad(int64_t first, int64_t count, const float* h, const float*, float* u,
                    Workspace<float>& ws) const {
    bf16::pack(h, in.batch, true, in.batch, count,
               ceil_div(in.batch, bf16::kTileRows) * bf16::kTileRows, ws.a);
    bf16::pack(w16() + first * in.dim, in.dim, true, in.dim, count, bf16::kPanelCols, ws.b);
    bf16::gemm(bf16::Left::packed(ws.a), ws.b, u, in.dim, true);
  }

  const c10::BFloat16* w16() const { return in.weight.const_data_ptr<c10::BFloat16>(); }
  const c10::BFloat16* in_x16() {
    features16 = in.x.to(at::kBFloat16);  // exact: the features are bf16
    return features16.const_data_ptr<c10::BFloat16>();
  }

  const Inputs& in;
  at::Tensor features16;
  bf16::Packed x_by_row, x_by_column;  // X as the right operand of W_c Xᵀ and of H X
};

// Calls f(acc_t{}, products, kernels) with the products for `in` and the passes compiled for
// this CPU.
template <typename F>
void with_products(const Inputs& in, const F& f) {
  const auto run = [&](auto kernels) {
    if (in.acc == at::kDouble) {
      f(double{}, BlasProducts<double>{in}, kernels);
    } else if (in.bf16) {
      f(float{}, Bf16Products(in), kernels);
    } else {
      f(float{}, BlasProducts<float>{in}, kernels);
    }
  };
  switch (cpu_isa()) {
    case Isa::kAvx512: return run(avx512::ChunkKernels{});
    case Isa::kAvx2: return run(avx2::ChunkKernels{});
    default: return run(baseline::ChunkKernels{});
  }
}

// Calls f(T{}) with the C++ type T of a floating dtype.
template <typename F>
void with_storage(at::ScalarType dtype, const F& f) {
  switch (dtype) {
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: return f(float{});
  }
}

// The weight norms, from the weight rows as stored.
template <typename acc_t, typename K>
void weight_norms_into(K kernels, const Inputs& in, acc_t* norms) {
  const at::Tensor& w = in.weight;
  if (w.scalar_type() == c10::CppTypeToScalarType<acc_t>::value) {
    kernels.row_norms(w.const_data_ptr<acc_t>(), in.classes, in.dim, norms);
  } else if constexpr (std::is_same_v<acc_t, float>) {
    if (w.scalar_type() == at::kBFloat16) {
      kernels.row_norms_of(w.const_data_ptr<c10::BFloat16>(), in.classes, in.dim, norms);
    } else {
      kernels.row_norms_of(w.const_data_ptr<c10::Half>(), in.classes, in.dim, norms);
    }
  } else {
    kernels.row_norms(w.to(at::kDouble).const_data_ptr<acc_t>(), in.classes, in.dim, norms);
  }
}

template <typename acc_t>
acc_t* data(const at::Tensor& t) {
  return t.mutable_data_ptr<acc_t>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> he_ce_chunked_forward(
    const at::Tensor& features, const at::Tensor& weight, const at::Tensor& target, double scale,
    double margin, double label_smoothing, bool feature_norm, bool weight_norm, int64_t chunk) {
  check_he_chunked_forward(features, weight, target, chunk);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const Inputs in(features, weight, target, feature_norm, weight_norm);
  const Plan plan(in.batch, in.classes, chunk, kForwardSlices);
  const auto stats = in.x.options();
  const auto norms = [&](bool computed, int64_t count) {
    return computed ? at::empty({count}, stats) : at::ones({count}, stats);
  };
  at::Tensor feature_norms = norms(feature_norm, in.batch);
  at::Tensor weight_norms = norms(weight_norm, in.classes);
  at::Tensor loss = at::empty({in.batch}, stats);
  at::Tensor lse = at::empty({in.batch}, stats);
  at::Tensor target_grad = at::empty({in.batch}, stats);
  const int64_t* labels = in.labels.const_data_ptr<int64_t>();
  with_products(in, [&](auto acc_tag, const auto& products, auto kernels) {
    using acc_t = decltype(acc_tag);
    constexpr bool kReadsRows = std::decay_t<decltype(products)>::kReadsRows;
    for (int64_t b = 0; b < in.batch; ++b) {
      check_he_label(labels[b], in.classes);
    }
    if (feature_norm) {
      kernels.row_norms(in.x.const_data_ptr<acc_t>(), in.batch, in.dim, data<acc_t>(feature_norms));
    }
    if (weight_norm) {
      weight_norms_into<acc_t>(kernels, in, data<acc_t>(weight_norms));
    }
    const std::vector<acc_t> inv_x = inverses<acc_t>(feature_norms, feature_norm);
    const std::vector<acc_t> inv_w = inverses<acc_t>(weight_norms, weight_norm);
    const auto s = static_cast<acc_t>(scale);
    const auto m = static_cast<acc_t>(margin);
    const bool smoothing = label_smoothing != 0;
    // Per slice and batch row: the largest logit, Σ e^{z − z_max} over the non-target
    // logits and Σ z; per batch row the target's logit (from the slice holding it).
    std::vector<acc_t> z_max(plan.slices * in.batch, std::numeric_limits<acc_t>::lowest());
    std::vector<acc_t> rest(plan.slices * in.batch, 0);
    std::vector<double> z_sum(plan.slices * in.batch, 0);
    std::vector<acc_t> z_y(in.batch);
    run_tasks(plan.slices, [&](int64_t slice) {
      Workspace<acc_t> ws;
      acc_t* top = z_max.data() + slice * in.batch;
      acc_t* sums = rest.data() + slice * in.batch;
      double* totals = z_sum.data() + slice * in.batch;
      for (int64_t c = plan.first_chunk(slice); c < plan.first_chunk(slice + 1); ++c) {
        const int64_t first = plan.begin(c), count = plan.count(c);
        ws.block.resize(count * in.batch);
        products.dots(first, count, kReadsRows ? weight_rows(in, first, count, ws.rows) : nullptr,
                      ws.block.data());
        for (int64_t b = 0; b < in.batch; ++b) {  // the target's logit, with the margin
          const int64_t j = labels[b] - first;
          if (j < 0 || j >= count) continue;
          acc_t& dot = ws.block[j * in.batch + b];
          const acc_t cos_y = dot * inv_x[b] * inv_w[labels[b]];
          z_y[b] = s * (cos_y - m);  // rounded as the reference's s · (cos − m)
          dot = -std::numeric_limits<acc_t>::infinity();  // out of `rest`
          if (z_y[b] > top[b]) {
            sums[b] *= std::exp(top[b] - z_y[b]);
            top[b] = z_y[b];
          }
          totals[b] += static_cast<double>(z_y[b]);
        }
        kernels.softmax_stats(ws.block.data(), count, in.batch, inv_x.data(),
                              inv_w.data() + first, s, top, sums, smoothing ? totals : nullptr);
      }
    });
    for (int64_t b = 0; b < in.batch; ++b) {  // the slices merged in order
      acc_t top = z_max[b];
      for (int64_t slice = 1; slice < plan.slices; ++slice) {
        top = std::max(top, z_max[slice * in.batch + b]);
      }
      acc_t sum = 0;
      double total = 0;
      for (int64_t slice = 0; slice < plan.slices; ++slice) {
        const acc_t slice_top = z_max[slice * in.batch + b];
        const acc_t slice_sum = rest[slice * in.batch + b];
        sum += slice_top == top ? slice_sum : slice_sum * std::exp(slice_top - top);
        total += z_sum[slice * in.batch + b];
      }
      const RowLoss<acc_t> row(top, z_y[b], sum, static_cast<acc_t>(total), in.classes, scale,
                               label_smoothing);
      data<acc_t>(loss)[b] = row.loss;
      data<acc_t>(lse)[b] = row.lse;
      data<acc_t>(target_grad)[b] = row.target_grad;
    }
  });
  return {loss, lse, target_grad, feature_norms, weight_norms};
}

std::tuple<at::Tensor, at::Tensor> he_ce_chunked_backward(
    const at::Tensor& grad_rows, const at::Tensor& features, const at::Tensor& weight,
    const at::Tensor& target, const at::Tensor& lse, const at::Tensor& target_grad,
    const at::Tensor& feature_norms, const at::Tensor& weight_norms, double scale,
    double label_smoothing, bool feature_norm, bool weight_norm, int64_t chunk) {
  check_he_chunked_backward(grad_rows, features, weight, target, lse, target_grad, feature_norms,
                            weight_norms, chunk);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const NoAutocast no_autocast;
  const Inputs in(features, weight, target, feature_norm, weight_norm);
  const Plan plan(in.batch, in.classes, chunk, backward_slices(in.classes, in.dim));
  at::Tensor d_weight = at::empty_like(in.weight);
  at::Tensor u_parts = at::zeros({plan.slices, in.batch, in.dim}, in.x.options());
  const int64_t* labels = in.labels.const_data_ptr<int64_t>();
  with_products(in, [&](auto acc_tag, const auto& products, auto kernels) {
    using acc_t = decltype(acc_tag);
    using Products = std::decay_t<decltype(products)>;
    constexpr auto kAcc = c10::CppTypeToScalarType<acc_t>::value;
    const std::vector<acc_t> inv_x = inverses<acc_t>(feature_norms, feature_norm);
    const std::vector<acc_t> inv_w = inverses<acc_t>(weight_norms, weight_norm);
    const at::Tensor w_norms = weight_norms.to(kAcc).contiguous();
    const at::Tensor row_lse = lse.to(kAcc).contiguous();
    const at::Tensor g = grad_rows.to(kAcc).contiguous();
    const at::Tensor t_grad = target_grad.to(kAcc).contiguous();
    const auto s = static_cast<acc_t>(scale);
    const acc_t off_target = static_cast<acc_t>(label_smoothing) / static_cast<acc_t>(in.classes);
    // Per batch row: the factor of its operand entries and its target's entry of H.
    std::vector<acc_t> row_scale(in.batch), target_h(in.batch);
    for (int64_t b = 0; b < in.batch; ++b) {
      const acc_t g_b = g.const_data_ptr<acc_t>()[b];
      row_scale[b] = g_b * s * inv_x[b];
      target_h[b] = g_b * t_grad.const_data_ptr<acc_t>()[b] * inv_x[b] * inv_w[labels[b]];
    }
    const acc_t* x = in.x.const_data_ptr<acc_t>();
    const bool in_place = in.weight.scalar_type() == kAcc;
    run_tasks(plan.slices, [&](int64_t slice) {
      Workspace<acc_t> ws;
      acc_t* u = data<acc_t>(u_parts) + slice * in.batch * in.dim;
      for (int64_t c = plan.first_chunk(slice); c < plan.first_chunk(slice + 1); ++c) {
        const int64_t first = plan.begin(c), count = plan.count(c);
        ws.block.resize(count * in.batch);
        acc_t* h = ws.block.data();
        const acc_t* w =
            Products::kReadsRows ? weight_rows(in, first, count, ws.rows) : nullptr;
        products.dots(first, count, w, h);
        kernels.grad_operand(h, count, in.batch, inv_x.data(), inv_w.data() + first, s,
                             row_lse.const_data_ptr<acc_t>(), row_scale.data(), off_target);
        for (int64_t b = 0; b < in.batch; ++b) {
          const int64_t j = labels[b] - first;
          if (j >= 0 && j < count) h[j * in.batch + b] = 0;  // added in the math dtype below
        }
        acc_t* v = in_place ? data<acc_t>(d_weight) + first * in.dim : nullptr;
        if (!in_place) {
          ws.v.resize(count * in.dim);
          v = ws.v.data();
        }
        products.weight_grad(h, count, v, ws);
        products.feature_grad(first, count, h, w, u, ws);
        for (int64_t b = 0; b < in.batch; ++b) {  // the target entries, batch rows in order
          const int64_t j = labels[b] - first;
          if (j < 0 || j >= count) continue;
          acc_t* u_row = u + b * in.dim;
          acc_t* v_row = v + j * in.dim;
          const acc_t* w_row = w != nullptr ? w + j * in.dim
                                            : weight_rows(in, labels[b], 1, ws.row);
          const acc_t* x_row = x + b * in.dim;
          for (int64_t d = 0; d < in.dim; ++d) {
            u_row[d] += target_h[b] * w_row[d];
            v_row[d] += target_h[b] * x_row[d];
          }
        }
        with_storage(in.weight.scalar_type(), [&](auto storage_tag) {
          using T = decltype(storage_tag);
          kernels.finish_rows(v, in.weight.const_data_ptr<T>() + first * in.dim,
                              w_norms.const_data_ptr<acc_t>() + first, count, in.dim,
                              weight_norm, d_weight.mutable_data_ptr<T>() + first * in.dim);
        });
      }
    });
    acc_t* u = data<acc_t>(u_parts);
    const int64_t part = in.batch * in.dim;
    for (int64_t slice = 1; slice < plan.slices; ++slice) {  // the slices' shares, in order
      const acc_t* share = u + slice * part;
      for (int64_t i = 0; i < part; ++i) {
        u[i] += share[i];
      }
    }
    if (feature_norm) {
      const at::Tensor x_norms = feature_norms.to(kAcc).contiguous();
      kernels.tangent_rows(u, x, x_norms.const_data_ptr<acc_t>(), in.batch, in.dim);
    }
  });
  return {u_parts[0].to(features.scalar_type()), d_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(heat_fast_C, CPU, m) {
  m.impl("he_ce_chunked_forward", &he_ce_chunked_forward);
  m.impl("he_ce_chunked_backward", &he_ce_chunked_backward);
}

}  // namespace heat_fast::cpu
