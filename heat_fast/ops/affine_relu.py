"""Per-channel affine + ReLU in one pass: eval-mode BatchNorm and the ReLU after it.

y = max(x·scale_c + shift_c, 0) for x (N, C, ...), the pre-activation ``relu(bn(x))`` of
PreActResNet and WideResNet blocks once BN runs on its running statistics. While an attack
crafts (K forward and backward passes per training step, weights frozen) and while a model
is evaluated, one pass over x replaces BN's pass and ReLU's pass, and one pass over the
gradient (dx = grad·scale_c where y > 0) replaces their two backward passes.

Backends: ``native`` (C++ CPU kernels, csrc/cpu/affine_relu.cpp: the dispatcher ops
``heat_fast_C::affine_relu`` / ``affine_relu_backward``, float32/float64/float16/bfloat16,
NCHW or channels_last, math in float32, float64 for float64) and ``reference``
(heat_fast.reference.affine_relu). On GPUs BN and ReLU stay cuDNN's and ATen's: there is no
Triton or CUDA kernel for this op, as no GPU measurement has shown one to pay.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from heat_fast import reference
from heat_fast._hooks import has_hooks
from heat_fast.ops.dispatch import resolve_cpu_op_backend

class _NativeAffineReLU(torch.autograd.Function):
    """The native op with its one-pass backward; gradient for x only (scale and shift are
    constants: the caller routes trainable ones to the reference)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        y = torch.ops.heat_fast_C.affine_relu.default(x, scale, shift)
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        y, scale = ctx.saved_tensors
        return torch.ops.heat_fast_C.affine_relu_backward.default(grad, y, scale), None, None


def affine_relu(x: Tensor, scale: Tensor, shift: Tensor, backend: Optional[str] = "auto"
                ) -> Tensor:
    """max(x·scale_c + shift_c, 0) for x (N, C, ...) float and scale, shift (C,) float32
    (float64 for float64 x) on x's device; y in x's dtype and layout (NCHW or channels_last).

    ``backend``: "auto" (native on CPU where the extension is built, else reference; the
    environment variable HEAT_FAST_BACKEND=reference or native overrides it), "native" or
    "reference". Differentiable in x; where scale or shift requires grad (and grad mode is
    on) the reference runs, so their gradients are computed too. The native backward is
    first-order only (a double backward raises)."""
    name = resolve_cpu_op_backend("affine_relu", backend, x)
    trainable = torch.is_grad_enabled() and (scale.requires_grad or shift.requires_grad)
    if name == "reference" or trainable:
        return reference.affine_relu(x, scale, shift)
    return _NativeAffineReLU.apply(x, scale, shift)


def batch_norm_affine(bn: nn.BatchNorm2d) -> Tuple[Tensor, Tensor]:
    """(scale, shift) with bn(x) = x·scale_c + shift_c for an eval-mode BN with running
    statistics: scale = γ / √(var + ε), shift = β − scale·mean (γ = 1, β = 0 without affine),
    in the running statistics' dtype; differentiable in γ and β."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return scale, shift


def _fusable(bn: nn.Module, relu: nn.Module, x: Tensor) -> bool:
    """Whether relu(bn(x)) is exactly one native affine_relu: a plain eval-mode BatchNorm2d
    on running statistics, a plain ReLU, no hooks, frozen or unneeded BN parameters, a 4-D
    CPU batch the native kernels take, outside torch.compile (whose fusion covers it)."""
    if (type(bn) is not nn.BatchNorm2d or bn.training or bn.running_var is None
            or type(relu) is not nn.ReLU or has_hooks(bn) or has_hooks(relu)):
        return False
    if torch.is_grad_enabled() and any(p.requires_grad for p in bn.parameters()):
        return False
    return (x.dim() == 4 and x.device.type == "cpu" and not torch.compiler.is_compiling()
            and resolve_cpu_op_backend("affine_relu", "auto", x) == "native")


def batch_norm_relu(bn: nn.Module, relu: nn.Module, x: Tensor) -> Tensor:
    """``relu(bn(x))``, as one native :func:`affine_relu` pass where that computes the same
    thing (see :func:`_fusable`: an eval-mode BN whose parameters need no gradient, as while
    an attack crafts with frozen weights or under ``torch.no_grad``), else the two modules."""
    if _fusable(bn, relu, x):
        math = torch.float64 if x.dtype == torch.float64 else torch.float32
        scale, shift = batch_norm_affine(bn)
        return _NativeAffineReLU.apply(x, scale.to(math), shift.to(math))
    return relu(bn(x))
