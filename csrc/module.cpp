// The heat_fast_C operator schemas and the Python module heat_fast._C.
//
// Importing heat_fast._C registers the ops torch.ops.heat_fast_C.* with the dispatcher; their
// CPU kernels live in csrc/cpu, their CUDA kernels (HEAT_FAST_WITH_CUDA builds) in csrc/cuda.
// Contracts: heat_fast/ops/he_loss.py, heat_fast/ops/pgd.py, heat_fast/ops/affine_relu.py
// and heat_fast/ops/max_pool.py.
#include <pybind11/pybind11.h>
#include <torch/headeronly/version.h>
#include <torch/library.h>

#ifdef HEAT_FAST_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include <string>

#include "cpu/isa.h"

TORCH_LIBRARY(heat_fast_C, m) {
  m.def(
      "he_ce_chunked_forward(Tensor features, Tensor weight, Tensor target, float scale, "
      "float margin, float label_smoothing, bool feature_norm, bool weight_norm, int chunk) "
      "-> (Tensor loss_rows, Tensor lse, Tensor target_grad, Tensor feature_norms, "
      "Tensor weight_norms)");
  m.def(
      "he_ce_chunked_backward(Tensor grad_rows, Tensor features, Tensor weight, Tensor target, "
      "Tensor lse, Tensor target_grad, Tensor feature_norms, Tensor weight_norms, float scale, "
      "float label_smoothing, bool feature_norm, bool weight_norm, int chunk) "
      "-> (Tensor d_features, Tensor d_weight)");
  m.def(
      "he_ce_forward(Tensor features, Tensor weight, Tensor target, float scale, float margin, "
      "float label_smoothing, bool feature_norm, bool weight_norm) "
      "-> (Tensor loss_rows, Tensor grad_cos, Tensor feature_norms, Tensor weight_norms)");
  m.def(
      "he_cross_entropy(Tensor features, Tensor weight, Tensor target, float scale, "
      "float margin, float label_smoothing, bool feature_norm, bool weight_norm, "
      "int reduction) -> Tensor");
  m.def(
      "cos_ce_forward(Tensor cos, Tensor target, float scale, float margin, "
      "float label_smoothing) -> (Tensor loss_rows, Tensor grad_cos)");
  m.def(
      "he_ce_backward(Tensor grad_rows, Tensor features, Tensor weight, Tensor grad_cos, "
      "Tensor feature_norms, Tensor weight_norms, bool feature_norm, bool weight_norm) "
      "-> (Tensor d_features, Tensor d_weight)");
  m.def("affine_relu(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def("affine_relu_backward(Tensor grad, Tensor y, Tensor scale) -> Tensor");
  m.def("max_pool2d(Tensor x, int kernel) -> (Tensor out, Tensor argmax)");
  m.def(
      "max_pool2d_backward(Tensor grad, Tensor argmax, int kernel, int height, int width, "
      "bool channels_last) -> Tensor");
  m.def(
      "pgd_step_(Tensor(a!) out, Tensor start, Tensor grad, Tensor x_nat, Tensor eps, "
      "Tensor alpha, Tensor clip_lo, Tensor clip_hi, str norm, bool delta) -> ()");
  m.def(
      "random_init_(Tensor(a!) out, Tensor x_nat, Tensor eps, Tensor clip_lo, Tensor clip_hi, "
      "Tensor seed, str norm) -> ()");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["torch"] = TORCH_VERSION;
#ifdef HEAT_FAST_WITH_CUDA
  info["cuda"] = std::to_string(CUDART_VERSION / 1000) + "." +
                 std::to_string(CUDART_VERSION % 1000 / 10);
  info["with_cuda"] = true;
#else
  info["cuda"] = pybind11::none();
  info["with_cuda"] = false;
#endif
#if defined(__clang__)
  info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = "gcc " __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = "msvc " + std::to_string(_MSC_VER);
#endif
  return info;
}

const char* cpu_isa() {
  switch (heat_fast::cpu::cpu_isa()) {
    case heat_fast::cpu::Isa::kAvx512: return "avx512";
    case heat_fast::cpu::Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "heat_fast native kernels: importing registers torch.ops.heat_fast_C.*";
  m.def("build_info", &build_info,
        "Versions this module was compiled against: torch, cuda (or None), compiler, with_cuda.");
  m.def("cpu_isa", &cpu_isa,
        "The instruction set the CPU kernels run: avx512, avx2 (with FMA) or baseline, the "
        "widest this CPU has capped by HEAT_FAST_CPU_ISA.");
}
