"""The convolutions an attack runs: BatchNorm folded in, weights cast once per attack.

While an attack crafts, the weights are frozen and BatchNorm runs on its running statistics,
so two things that a training forward must redo at every call can be done once per attack:

- an eval-mode BatchNorm2d after a convolution is a per-channel affine map y = a·x + b
  (a = γ / √(var + eps), b = β − a·mean) and folds into that convolution: weight W·a, bias
  a·bias + b. That saves the BN's forward and backward at every attack step;
- under bf16 autocast every convolution casts its float32 weight to bf16 at every call; a
  weight cast once per attack saves a read and a write of every weight per step (and, as
  autocast casts the same way, changes no value).

:func:`crafting_convolutions` swaps each plain ``nn.Conv2d`` (zero padding, no hooks) that
has such work to save for a :class:`CraftingConv` for the duration of a ``with`` block, and
its BN for an identity where one follows it: adjacent ``Conv2d``, ``BatchNorm2d`` entries of
an ``nn.Sequential``, or the (conv, bn) attribute names a module lists in its
``conv_bn_pairs`` (blocks whose forward feeds one convolution's output only into one BN, as
PreAct's conv1 → bn2). A BN folds only if it is exactly ``nn.BatchNorm2d``, in eval mode,
with running statistics and no hooks. The crafting convolution of a conv is made once and
refreshed in place on every entry, so a compiled or CUDA-graph-captured attack reads the same
tensors at every call.
"""
from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast._hooks import has_hooks
from heat_fast.ops.affine_relu import batch_norm_affine

# conv -> its crafting convolution (which holds no reference to the conv)
_SHADOWS: "weakref.WeakKeyDictionary[nn.Conv2d, CraftingConv]" = weakref.WeakKeyDictionary()
_IDENTITY = nn.Identity()  # stands in for every folded BN (stateless, so one serves all)


class CraftingConv(nn.Module):
    """A frozen ``nn.Conv2d`` with the eval-mode BN after it (if any) folded in, its weight
    and bias (non-persistent buffers) in ``dtype``; :meth:`refresh` recomputes them."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype,
                 memory_format: torch.memory_format = torch.preserve_format):
        super().__init__()
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.register_buffer("weight", torch.empty_like(conv.weight, dtype=dtype,
                                                        memory_format=memory_format),
                             persistent=False)
        self.register_buffer("bias", conv.weight.new_empty(conv.out_channels, dtype=dtype),
                             persistent=False)

    def fits(self, conv: nn.Conv2d, dtype: torch.dtype,
             memory_format: torch.memory_format = torch.preserve_format) -> bool:
        """Whether the buffers still match ``conv`` in shape and device, ``dtype``, and the
        strides of ``memory_format`` (preserve_format: ``conv``'s own)."""
        w = conv.weight
        wanted = torch.empty_like(w, device="meta", memory_format=memory_format).stride()
        return (self.weight.shape == w.shape and self.weight.dtype == dtype
                and self.weight.device == w.device and self.weight.stride() == wanted)

    @torch.no_grad()
    def refresh(self, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> "CraftingConv":
        weight = conv.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(self.bias, dtype=weight.dtype)
        if bn is not None:
            scale, shift = batch_norm_affine(bn)
            weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale + shift
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def _plain_conv(module: Optional[nn.Module]) -> bool:
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros"
            and not has_hooks(module))


def _foldable(conv: nn.Conv2d, bn: Optional[nn.Module]) -> bool:
    return (type(bn) is nn.BatchNorm2d and not bn.training and bn.running_var is not None
            and bn.num_features == conv.out_channels and not has_hooks(bn))


def _bn_after(parent: nn.Module) -> Dict[str, str]:
    """conv name -> name of the BN that consumes its output, among ``parent``'s children."""
    names = list(parent._modules)
    pairs = (zip(names, names[1:]) if type(parent) is nn.Sequential
             else getattr(parent, "conv_bn_pairs", ()))
    return dict(pairs)


def _other_layout(weight: Tensor, memory_format: torch.memory_format) -> bool:
    return (memory_format != torch.preserve_format
            and not weight.is_contiguous(memory_format=memory_format))


def _swaps(model: nn.Module, dtype: Optional[torch.dtype], memory_format: torch.memory_format
           ) -> List[Tuple[nn.Module, str, Optional[str]]]:
    """(parent, conv name, name of the BN to fold or None) of every conv worth swapping. A
    conv or BN held in more than one place (shared, or registered twice) is not folded: one
    of its uses would run without the BN or with a BN it does not have."""
    parents = list(model.modules())
    uses = Counter(id(child) for parent in parents for child in parent._modules.values())
    found = []
    for parent in parents:
        bn_after = _bn_after(parent)
        for name, conv in parent._modules.items():
            if not _plain_conv(conv):
                continue
            bn_name = bn_after.get(name)
            bn = parent._modules.get(bn_name) if bn_name else None
            if not _foldable(conv, bn) or uses[id(conv)] > 1 or uses[id(bn)] > 1:
                bn_name = None
            if (bn_name is not None or (dtype is not None and dtype != conv.weight.dtype)
                    or _other_layout(conv.weight, memory_format)):
                found.append((parent, name, bn_name))
    return found


def _shadow(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], dtype: torch.dtype,
            memory_format: torch.memory_format) -> CraftingConv:
    shadow = _SHADOWS.get(conv)
    if shadow is None or not shadow.fits(conv, dtype, memory_format):
        shadow = _SHADOWS[conv] = CraftingConv(conv, dtype, memory_format)
    return shadow.refresh(conv, bn)


@contextlib.contextmanager
def crafting_convolutions(model: nn.Module, dtype: Optional[torch.dtype] = None,
                          memory_format: torch.memory_format = torch.preserve_format
                          ) -> Iterator[None]:
    """Inside the block, run ``model``'s convolutions as :class:`CraftingConv` (see the
    module docstring): with every foldable BN folded in, in ``dtype`` (the autocast dtype
    the attack runs under; None: the weights' own) and with weights in ``memory_format``
    (``torch.channels_last`` makes the convolutions run NHWC without touching the model's
    own parameters; preserve_format: their layout). The modules are put back on exit, also
    when the block raises. For frozen weights only: the swaps are computed on entry."""
    swapped = []
    for parent, name, bn_name in _swaps(model, dtype, memory_format):
        conv = parent._modules[name]
        bn = parent._modules[bn_name] if bn_name is not None else None
        swapped.append((parent, name, conv, bn_name, bn))
    try:
        for parent, name, conv, bn_name, bn in swapped:
            parent._modules[name] = _shadow(conv, bn, dtype or conv.weight.dtype, memory_format)
            if bn_name is not None:
                parent._modules[bn_name] = _IDENTITY
        yield
    finally:
        for parent, name, conv, bn_name, bn in swapped:
            parent._modules[name] = conv
            if bn_name is not None:
                parent._modules[bn_name] = bn
