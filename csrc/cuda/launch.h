// Launchers of the CUDA kernels on raw device pointers and a stream.
//
// This header and the .cu files use only CUDA headers (no torch), so .ci/compile_cuda.sh can
// compile them with nvcc alone; csrc/cuda/ops.cpp turns tensors into these calls. Every
// launcher is asynchronous on `stream` and returns cudaGetLastError() of its launches.
// "Float" is float32 or float64 (the math dtype, see csrc/checks.h); element counts are int64.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../budget.h"

namespace heat_fast::cuda {

using heat_fast::Budget;

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Row norms of x (x_rows × cols) and w (w_rows × cols), both stored as `in_dtype`, in one
// launch: x_norms[r] = ‖x[r, :]‖₂ and w_norms[r] = ‖w[r, :]‖₂ in in_dtype's math dtype (float64
// for float64, float32 otherwise); a side that is not enabled gets norms of 1.
cudaError_t row_norms(const void* x, int64_t x_rows, bool x_enabled, const void* w,
                      int64_t w_rows, bool w_enabled, int64_t cols, DType in_dtype, void* x_norms,
                      void* w_norms, cudaStream_t stream);

struct LossOptions {
  double scale, margin, smoothing;
  bool feature_norm, weight_norm;
};

// In place on the batch × classes matrix `buf` of raw dots x_b · W_j: writes dloss/dcos and
// loss[b] (heat_fast.ops.he_loss contract); null norms are norms of 1 (`buf` holds cosines). A label outside [0, classes) fails a device
// assert (the launch's stream reports cudaErrorAssert).
cudaError_t ce_rows(void* buf, const int64_t* target, const void* feature_norms,
                    const void* weight_norms, int64_t batch, int64_t classes,
                    const LossOptions& options, DType dtype, void* loss, cudaStream_t stream);

// The backward's GEMM operands from dL/dcos G (batch × classes), all inputs in `acc`:
//   P = G ⊘ ‖W‖ / scales[0]            (d_features = diag(g)·P·W·scales[0], before the
//   Q = G ⊙ (g ⊘ ‖x‖) / scales[1]       normalization backward; d_weight = Qᵀ·x·scales[1])
// stored as `operand`: the math dtype itself, or a 16-bit dtype as a high part and a low part
// (v − hi)·split_lo_scale(operand). `scales` (2 floats, written here) only for float16, whose
// range needs them; nullptr otherwise (scales of 1).
struct GradOperands {
  const void* grad_rows;
  const void* grad_cos;
  const void* feature_norms;
  const void* weight_norms;
  int64_t batch, classes;
  DType acc, operand;
  void* p_hi;
  void* p_lo;
  void* q_hi;
  void* q_lo;
  float* scales;
};

double split_lo_scale(DType operand);
cudaError_t grad_operands(const GradOperands& args, cudaStream_t stream);

// One gradient's last pass (rows × cols): v = (hi + lo / split_lo_scale)·row_mult·scale, then
// the normalization backward (v − x̂(x̂·v))/‖x‖ when `normalize`, stored as out_dtype.
// hi, lo (nullable), row_mult (nullable, per row) and norms are in the math dtype; scale is a
// device float or nullptr; x is the input the rows belong to, stored as x_dtype.
struct GradSide {
  const void* hi;
  const void* lo;
  const void* row_mult;
  const float* scale;
  const void* x;
  DType x_dtype;
  const void* norms;
  bool normalize;
  void* out;
  DType out_dtype;
  int64_t rows;
};

// d_features and d_weight in one launch (one block per row of either).
cudaError_t finalize_grads(const GradSide& features, const GradSide& weight, int64_t cols,
                           DType acc, double lo_weight, cudaStream_t stream);

// The projected step on batch × numel images (heat_fast.ops.pgd contract), from x_adv
// (position form) or from δ (`delta`). start, grad and x_nat share `in_dtype`; out
// (`out_dtype`) may alias any of them. Budgets: csrc/budget.h (device pointers).
struct StepArgs {
  void* out;
  DType out_dtype;
  const void* start;
  const void* grad;
  const void* x_nat;
  DType in_dtype;
  Budget eps, alpha, lo, hi;
  int64_t batch, numel;
  bool delta;
};

// Doubles of workspace (per-sample partial sums) the L2 step and the L2 random start need.
int64_t l2_workspace_size(int64_t batch, int64_t numel);

cudaError_t pgd_step_linf(const StepArgs& args, cudaStream_t stream);
cudaError_t pgd_step_l2(const StepArgs& args, double* workspace, cudaStream_t stream);

// A random start drawn from the int64 *seed (read on the device) into out (dtype of x_nat).
struct RandomArgs {
  void* out;
  const void* x_nat;
  DType dtype;
  Budget eps, lo, hi;
  const int64_t* seed;
  int64_t batch, numel;
};

cudaError_t random_init_linf(const RandomArgs& args, cudaStream_t stream);
cudaError_t random_init_l2(const RandomArgs& args, double* workspace, cudaStream_t stream);

}  // namespace heat_fast::cuda
