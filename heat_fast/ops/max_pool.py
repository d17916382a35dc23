"""Max-pool with stride = kernel (the small CNN's ``MaxPool2d(2)``), forward and backward in one
pass each on CPU.

out = the maximum of each k×k window of x (N, C, H, W) (heat_fast.reference.max_pool2d: the
gradient goes to each window's first maximum, NaN wins). The native forward also returns,
as one byte per window, which of its k² elements won; the backward writes every element of
the input gradient once from those bytes. ATen's kernels instead keep an int64 index per
window and zero the whole gradient before scattering into it, and torch.compile's CPU
lowering recomputes the indices inside the attack's graph: together 3–4 ms of a small-CNN
crafting step at B128 in bfloat16 channels_last, which the native pair does in a fraction
(benchmarks/test_bench_max_pool.py). The native ops are opaque to torch.compile.

Backends: ``native`` (C++ CPU kernels, csrc/cpu/max_pool.cpp: the dispatcher ops
``heat_fast_C::max_pool2d`` / ``max_pool2d_backward``; float32/float64/float16/bfloat16, NCHW
or channels_last, output in x's layout; kernel ≤ 16) and ``reference``. On GPUs the pooling
stays cuDNN's and ATen's (and inductor's under torch.compile).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from heat_fast import reference
from heat_fast.ops.dispatch import BackendUnavailableError, resolve_cpu_op_backend

MAX_NATIVE_KERNEL = 16  # the window index of each output fits one byte


def _channels_last(x: Tensor) -> bool:
    """The native ops' layout rule: channels_last when x is laid out so and not also plainly
    contiguous, else NCHW."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _picked(grad_x: Tensor, argmax: Tensor, kernel: int) -> Tensor:
    """grad_x (N, C, H, W) at each window's winning element (argmax (N, C, h, w) uint8):
    (N, C, h, w), the adjoint of the backward."""
    n, c, h, w = argmax.shape
    windows = grad_x[:, :, :h * kernel, :w * kernel].reshape(n, c, h, kernel, w, kernel)
    windows = windows.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w, kernel * kernel)
    return windows.gather(4, argmax.long().unsqueeze(4)).squeeze(4)


class _NativeMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel: int) -> Tensor:
        out, argmax = torch.ops.heat_fast_C.max_pool2d.default(x, kernel)
        ctx.save_for_backward(argmax)
        ctx.kernel, ctx.size, ctx.channels_last = kernel, tuple(x.shape[2:]), _channels_last(x)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (argmax,) = ctx.saved_tensors
        return _NativeMaxPoolBackward.apply(grad, argmax, ctx.kernel, *ctx.size,
                                            ctx.channels_last), None


class _NativeMaxPoolBackward(torch.autograd.Function):
    """The backward as a function of the output gradient, so that it is differentiable again
    (double backward, as torch's max-pool has it)."""

    @staticmethod
    def forward(ctx, grad: Tensor, argmax: Tensor, kernel: int, height: int, width: int,
                channels_last: bool) -> Tensor:
        ctx.save_for_backward(argmax)
        ctx.kernel = kernel
        return torch.ops.heat_fast_C.max_pool2d_backward.default(grad, argmax, kernel, height,
                                                                 width, channels_last)

    @staticmethod
    def backward(ctx, grad_grad_x: Tensor):
        (argmax,) = ctx.saved_tensors
        return _picked(grad_grad_x, argmax, ctx.kernel), None, None, None, None, None


def max_pool2d(x: Tensor, kernel_size: int, backend: Optional[str] = "auto") -> Tensor:
    """``F.max_pool2d(x, kernel_size)`` (stride = kernel size, no padding) for x (N, C, H, W)
    float with H, W ≥ kernel_size: (N, C, H // k, W // k) in x's dtype and layout.

    ``backend``: "auto" (native on CPU where the extension is built and kernel_size ≤ 16,
    else reference; HEAT_FAST_BACKEND=reference or native overrides it), "native" or
    "reference". Differentiable in x, twice."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
    if x.dim() != 4 or x.shape[2] < kernel_size or x.shape[3] < kernel_size:
        raise ValueError(f"x must have shape (N, C, H, W) with H and W at least kernel_size = "
                         f"{kernel_size}, got {tuple(x.shape)}")
    name = resolve_cpu_op_backend("max_pool2d", backend, x)
    if name == "native" and kernel_size > MAX_NATIVE_KERNEL:
        if backend == "native":
            raise BackendUnavailableError(f"backend 'native' runs max_pool2d for kernel_size "
                                          f"≤ {MAX_NATIVE_KERNEL}, got {kernel_size}")
        name = "reference"
    if name == "reference":
        return reference.max_pool2d(x, kernel_size)
    return _NativeMaxPool.apply(x, kernel_size)
