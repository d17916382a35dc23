"""Pooling layers whose backward passes suit channels_last batches and torch.compile.

:class:`GlobalAvgPool` hands the layer below an expanded gradient instead of an NCHW one.
:class:`MaxPool` is ``nn.MaxPool2d(k)`` (same kernels, same values and gradients, the first
maximum of a window takes the gradient) whose backward stays ATen's kernel under
torch.compile: the op ``heat_fast::max_pool2d_backward`` is opaque to the compiler, whose own
CPU lowering of the max-pool backward is about ten times slower (bf16, 128×32×32×32).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor, nn


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) → (B, C), the mean over H and W.

    As ``AdaptiveAvgPool2d(1)`` + ``Flatten``, but its backward hands the layer below an
    expanded gradient (the sum's; the division is on the (B, C) result) rather than an NCHW
    one: with channels_last activations an NCHW gradient puts that layer's backward (a
    ReLU's) on a slow mixed-layout path (bf16, 128×64×16×16 on one core: 22 ms, not 0.3 ms)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


@torch.library.custom_op("heat_fast::max_pool2d_backward", mutates_args=())
def max_pool2d_backward(grad: Tensor, x: Tensor, indices: Tensor, kernel: List[int]) -> Tensor:
    """ATen's max-pool backward (stride = kernel, no padding): ``grad`` (B, C, h, w) routed
    to the positions ``indices`` picked in x (B, C, H, W)."""
    return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, kernel, kernel, [0, 0],
                                                          [1, 1], False, indices)


@max_pool2d_backward.register_fake
def _max_pool2d_backward_fake(grad, x, indices, kernel):
    return torch.empty_like(x)


def _setup_double_backward(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[2])
    ctx.grad_shape = inputs[0].shape


def _double_backward(ctx, grad_grad_x: Tensor):
    """The backward is linear in ``grad``: its adjoint gathers at the picked positions."""
    (indices,) = ctx.saved_tensors
    picked = grad_grad_x.flatten(2).gather(2, indices.flatten(2))
    return picked.view(ctx.grad_shape), None, None, None


max_pool2d_backward.register_autograd(_double_backward, setup_context=_setup_double_backward)


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel: int) -> Tensor:
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, [kernel, kernel], [kernel, kernel])
        ctx.save_for_backward(x, indices)
        ctx.kernel = kernel
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, indices = ctx.saved_tensors
        return max_pool2d_backward(grad, x, indices, [ctx.kernel, ctx.kernel]), None


class MaxPool(nn.Module):
    """``nn.MaxPool2d(kernel_size)`` (stride = kernel size, no padding); see the module
    docstring for why its backward is an op of its own."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return _MaxPool.apply(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
