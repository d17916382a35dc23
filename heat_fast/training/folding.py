"""BatchNorm folded into the convolution before it, while an attack crafts.

In eval mode a BatchNorm2d is a per-channel affine map y = a·x + b (a = γ / √(var + eps),
b = β − a·mean); after a convolution it folds into that convolution: weight W·a, bias
a·bias + b. While an attack crafts, the weights are frozen and BN runs on its running
statistics, so each conv → BN pair can run as one convolution, which saves the BN's forward
and backward at every attack step. :func:`folded_batchnorm` swaps the pairs it finds for the
duration of a ``with`` block:

- adjacent ``Conv2d``, ``BatchNorm2d`` entries of any ``nn.Sequential``;
- the (conv, bn) attribute names a module lists in its ``conv_bn_pairs`` (for blocks whose
  forward feeds one convolution's output only into one BN, as PreAct's conv1 → bn2).

A pair is folded only if the modules are exactly ``nn.Conv2d`` (zero padding) and
``nn.BatchNorm2d``, the BN is in eval mode with running statistics, and neither has hooks
(a hook must see its module run). The folded convolution of a BN is made once and refreshed
in place on every entry, so a compiled or CUDA-graph-captured attack reads the same tensors
at every call.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# BN -> its folded convolution (the value holds the conv, not the BN)
_FOLDS: "weakref.WeakKeyDictionary[nn.BatchNorm2d, FoldedConv]" = weakref.WeakKeyDictionary()
_IDENTITY = nn.Identity()  # stands in for every folded BN (stateless, so one serves all)


class FoldedConv(nn.Module):
    """``conv`` followed by the eval-mode ``bn`` as one convolution; :meth:`refresh` computes
    the folded weight and bias (non-persistent buffers) from the current weights."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.register_buffer("weight", torch.empty_like(conv.weight), persistent=False)
        self.register_buffer("bias", conv.weight.new_empty(conv.out_channels), persistent=False)

    def fits(self, conv: nn.Conv2d) -> bool:
        """Whether the buffers still match ``conv`` (the same module, weight shape, dtype,
        device and strides)."""
        w = conv.weight
        return (conv is self.conv and self.weight.shape == w.shape and self.weight.dtype == w.dtype
                and self.weight.device == w.device and self.weight.stride() == w.stride())

    @torch.no_grad()
    def refresh(self, bn: nn.BatchNorm2d) -> "FoldedConv":
        scale = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * scale
        if bn.affine:
            scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
        if self.conv.bias is not None:
            shift = shift + self.conv.bias * scale
        torch.mul(self.conv.weight, scale.view(-1, 1, 1, 1), out=self.weight)
        self.bias.copy_(shift)
        return self

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        return F.conv2d(x, self.weight, self.bias, c.stride, c.padding, c.dilation, c.groups)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and conv.padding_mode == "zeros"
            and not bn.training and bn.running_var is not None
            and bn.num_features == conv.out_channels and not (_hooked(conv) or _hooked(bn)))


def _pairs(model: nn.Module) -> List[Tuple[nn.Module, str, str]]:
    """(parent, conv name, bn name) of every foldable pair in ``model``."""
    found = []
    for parent in model.modules():
        names = list(parent._modules)
        candidates = (list(zip(names, names[1:])) if type(parent) is nn.Sequential
                      else list(getattr(parent, "conv_bn_pairs", ())))
        for conv_name, bn_name in candidates:
            conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
            if conv is not None and bn is not None and _foldable(conv, bn):
                found.append((parent, conv_name, bn_name))
    return found


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> FoldedConv:
    fold = _FOLDS.get(bn)
    if fold is None or not fold.fits(conv):
        fold = _FOLDS[bn] = FoldedConv(conv)
    return fold.refresh(bn)


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module) -> Iterator[None]:
    """Run every foldable conv → BN pair of ``model`` (see the module docstring) as one
    folded convolution inside the block; the modules are put back on exit, also when the
    block raises. For frozen weights only: the folds are computed on entry."""
    swapped = [(parent, c, b, parent._modules[c], parent._modules[b]) for parent, c, b in _pairs(model)]
    try:
        for parent, c, b, conv, bn in swapped:
            parent._modules[c], parent._modules[b] = _folded(conv, bn), _IDENTITY
        yield
    finally:
        for parent, c, b, conv, bn in swapped:
            parent._modules[c], parent._modules[b] = conv, bn
