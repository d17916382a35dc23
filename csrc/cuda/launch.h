// Launchers of the CUDA kernels on raw device pointers and a stream.
//
// This header and the .cu files use only CUDA headers (no torch), so .ci/compile_cuda.sh can
// compile them with nvcc alone; csrc/cuda/ops.cpp turns tensors into these calls. Every
// launcher is asynchronous on `stream` and returns cudaGetLastError() of its launches.
// "Float" is float32 or float64 (the math dtype, see csrc/checks.h); element counts are int64.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace heat_fast::cuda {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// norms[r] = ‖x[r, :]‖₂ for a rows × cols matrix of `dtype` (kFloat32 or kFloat64).
cudaError_t row_norms(const void* x, int64_t rows, int64_t cols, DType dtype, void* norms,
                      cudaStream_t stream);

struct LossOptions {
  double scale, margin, smoothing;
  bool feature_norm, weight_norm;
};

// In place on the batch × classes matrix `buf` of raw dots x_b · W_j: writes dloss/dcos and
// loss[b] (heat_fast.ops.he_loss contract). Labels outside [0, classes) give NaN rows.
cudaError_t ce_rows(void* buf, const int64_t* target, const void* feature_norms,
                    const void* weight_norms, int64_t batch, int64_t classes,
                    const LossOptions& options, DType dtype, void* loss, cudaStream_t stream);

// gw = G ⊘ ‖w‖ and gx = G ⊘ ‖x‖ with G = grad_rows[:, None] · grad_cos.
cudaError_t scaled_grads(const void* grad_rows, const void* grad_cos, const void* feature_norms,
                         const void* weight_norms, int64_t batch, int64_t classes,
                         bool feature_norm, bool weight_norm, DType dtype, void* gw, void* gx,
                         cudaStream_t stream);

// In place on rows × cols `grad` (dL/dx̂ → dL/dx) for x̂ = x / max(‖x‖, 1e-12).
cudaError_t normalize_backward(void* grad, const void* x, const void* norms, int64_t rows,
                               int64_t cols, DType dtype, cudaStream_t stream);

// The projected step on batch × numel images (heat_fast.ops.pgd contract). x_adv, grad and
// x_nat share `in_dtype`; out (`out_dtype`) may alias x_adv. eps and alpha: float32 (batch,).
struct StepArgs {
  void* out;
  DType out_dtype;
  const void* x_adv;
  const void* grad;
  const void* x_nat;
  DType in_dtype;
  const float* eps;
  const float* alpha;
  int64_t batch, numel;
  double clip_min, clip_max;
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
  const float* eps;
  const int64_t* seed;
  int64_t batch, numel;
  double clip_min, clip_max;
};

cudaError_t random_init_linf(const RandomArgs& args, cudaStream_t stream);
cudaError_t random_init_l2(const RandomArgs& args, double* workspace, cudaStream_t stream);

}  // namespace heat_fast::cuda
