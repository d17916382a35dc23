"""Pooling layers whose passes suit channels_last batches and torch.compile.

:class:`GlobalAvgPool` hands the layer below an expanded gradient instead of an NCHW one.
:class:`MaxPool` is ``nn.MaxPool2d(k)`` (same values and gradients: the first maximum of a
window takes the gradient) through :func:`heat_fast.ops.max_pool.max_pool2d`, whose native
CPU ops are opaque to torch.compile.
"""
from __future__ import annotations

from torch import Tensor, nn

from heat_fast.ops.max_pool import max_pool2d


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) → (B, C), the mean over H and W.

    As ``AdaptiveAvgPool2d(1)`` + ``Flatten``, but its backward hands the layer below an
    expanded gradient (the sum's; the division is on the (B, C) result) rather than an NCHW
    one: with channels_last activations an NCHW gradient puts that layer's backward (a
    ReLU's) on a slow mixed-layout path (bf16, 128×64×16×16 on one core: 22 ms, not 0.3 ms)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


class MaxPool(nn.Module):
    """``nn.MaxPool2d(kernel_size)`` (stride = kernel size, no padding) through
    :func:`heat_fast.ops.max_pool.max_pool2d` (the native CPU kernels where they run)."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
