// A budget of the projected step (eps, alpha or a clip bound) as the CPU and CUDA kernels read
// it: one value, or values[(i / inner) % period] for flat element i of the contiguous images,
// which covers per-sample, per-channel and any broadcast whose varying dimensions are adjacent
// (csrc/budgets.h builds it from a tensor). Torch-free: the CUDA kernels include it.
#pragma once

#include <cstdint>

#include "philox.h"  // HF_HOST_DEVICE

namespace heat_fast {

struct Budget {
  float scalar = 0;
  const float* values = nullptr;  // nullptr: every element has `scalar`
  int64_t inner = 1, period = 1;

  HF_HOST_DEVICE float at(int64_t i) const {
    return values ? values[(i / inner) % period] : scalar;
  }
  // Elements of one run share the value: inner, or "all of them" for a single value.
  int64_t run(int64_t total) const { return values && period > 1 ? inner : total; }
};

}  // namespace heat_fast
