"""Reference max-pool with stride = kernel: each k×k window's maximum.

out[n, c, i, j] = max over 0 ≤ a, b < k of x[n, c, i·k + a, j·k + b]; rows and columns past
the last whole window are dropped, a window holding NaN gives NaN, and the gradient of a
window goes to its first maximum in row-major order (torch's ``max_pool2d``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def max_pool2d(x: Tensor, kernel_size: int) -> Tensor:
    """x (N, C, H, W) float → (N, C, H // k, W // k) in x's dtype; differentiable in x."""
    return F.max_pool2d(x, kernel_size, kernel_size)
