// Launchers of the large-class HE loss's CUDA kernels (he_loss_chunked.cu), on raw device
// pointers and a stream, like launch.h (CUDA headers only). csrc/cuda/he_loss_chunked_ops.cpp
// runs the products on cuBLAS and these passes between them, one chunk of classes at a time.
// "acc" is the math dtype (float32, or float64 for float64 inputs); every array named below is
// in it unless said otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "launch.h"

namespace heat_fast::cuda {

// Running statistics of the forward, one value per batch row each: the largest logit (start
// at the lowest finite value), Σ e^{z − z_max} over the non-target logits, Σ z, and the
// target's logit (start at 0).
struct RowStats {
  void* z_max;
  void* rest;
  void* z_sum;
  void* z_y;
};

// Folds the dots (batch × count, row-major) of the classes [first, first + count) with every
// batch row into `stats` (one block per row).
cudaError_t chunk_stats(const void* dots, int64_t batch, int64_t count, int64_t first,
                        const int64_t* target, const void* feature_norms,
                        const void* weight_norms, const LossOptions& options, DType acc,
                        const RowStats& stats, cudaStream_t stream);

// loss, lse and target_grad of every row from its statistics (the contract of
// heat_fast.ops.he_loss_chunked); a label outside [0, classes) fails a device assert.
cudaError_t chunk_loss(const RowStats& stats, const int64_t* target, int64_t batch,
                       int64_t classes, const LossOptions& options, DType acc, void* loss,
                       void* lse, void* target_grad, cudaStream_t stream);

// The operand of both gradient products for the chunk's dots (batch × count), stored as
// `operand` (the math dtype, or bf16): H[b][j] = g_b · s · (e^{z_bj − lse_b} − ε / C) / (‖x_b‖
// ‖W_j‖) with z as chunk_stats forms it, and 0 at the target (chunk_target_terms adds it).
struct GradOperand {
  const void* dots;
  int64_t batch, count, first, classes;
  const int64_t* target;
  const void* grad_rows;
  const void* lse;
  const void* feature_norms;
  const void* weight_norms;
  double scale, smoothing;
  DType acc, operand;
  void* out;
};
cudaError_t chunk_grad_operand(const GradOperand& args, cudaStream_t stream);

// The target entries of H in the math dtype, for the rows whose target is in the chunk:
// u[b] += h_b · W[y_b] and v[y_b − first] += h_b · x[b] (batch rows in order), with
// h_b = g_b · target_grad_b / (‖x_b‖ ‖W_{y_b}‖). x (batch × dim) and the chunk's weight rows w
// (count × dim) are stored as `operand`; u (batch × dim) and v (count × dim) in the math dtype.
struct TargetTerms {
  int64_t batch, count, first, dim;
  const int64_t* target;
  const void* grad_rows;
  const void* target_grad;
  const void* feature_norms;
  const void* weight_norms;
  const void* x;
  const void* w;
  DType acc, operand;
  void* u;
  void* v;
};
cudaError_t chunk_target_terms(const TargetTerms& args, cudaStream_t stream);

}  // namespace heat_fast::cuda
