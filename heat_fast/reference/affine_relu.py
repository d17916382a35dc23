"""Reference per-channel affine + ReLU: y = max(x·scale_c + shift_c, 0).

For an eval-mode BatchNorm, scale = γ / √(var + ε) and shift = β − scale·mean, so
``affine_relu(x, *batch_norm_affine(bn))`` is ``relu(bn(x))``
(heat_fast.ops.affine_relu.batch_norm_affine).
"""
from __future__ import annotations

import torch
from torch import Tensor


def affine_relu(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x (N, C, ...) float; scale, shift (C,). Computed in float32 (float64 for float64 x),
    returned in x's dtype and memory layout; differentiable in x, scale and shift."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    math = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(math) * scale.to(math).view(shape) + shift.to(math).view(shape)
    return torch.relu(y).to(x.dtype)
