"""The wrapper every heat_fast model shares: normalization inside, a body, a head.

``Classifier(body, feature_dim, num_classes, he, mean, std)`` takes inputs in [0, 1]
(B, C, H, W), normalizes them per channel with buffers ``mean`` and ``std``, runs ``body``
to penultimate features (B, D) and applies ``head``: an :class:`~heat_fast.HELinear`
(bias-free, scale 1, so ``forward`` returns raw cosines in [-1, 1]; its ``weight_norm`` mode,
True or AT_HE's "project", is the one every heat_fast loss on this model uses) when ``he``
is true, else an ``nn.Linear``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch._C._functorch import is_functorch_wrapped_tensor

from heat_fast.nn import HELinear


def _channel_buffer(name: str, values: Optional[Sequence[float]], channels: int,
                    default: float) -> Tensor:
    if values is None:
        values = [default] * channels
    values = [float(v) for v in values]
    if len(values) != channels:
        raise ValueError(f"{name} must have one value per input channel ({channels}), got {values}")
    if name == "std" and min(values) <= 0:
        raise ValueError(f"std must be > 0 for every channel, got {values}")
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


def _under_vmap(x: Tensor) -> bool:
    """Whether x is a per-sample tensor of torch.vmap, whose layout cannot be queried (never
    while dynamo traces, which cannot call the check)."""
    return not torch.compiler.is_compiling() and is_functorch_wrapped_tensor(x)


class Classifier(nn.Module):
    """Normalize → body → head; see the module docstring.

    ``features(x)`` returns the body's (B, D) output; ``forward(x)`` the head's (B, C)
    logits (cosines for an HE head). ``mean``/``std`` of None mean 0 and 1 (no change).
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, he: bool,
                 in_channels: int = 3, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 weight_norm: Union[bool, str] = True):
        super().__init__()
        if not he and weight_norm is not True:
            raise ValueError(f"weight_norm={weight_norm!r} is a mode of the HE head: it needs he=True")
        self.register_buffer("mean", _channel_buffer("mean", mean, in_channels, 0.0))
        self.register_buffer("std", _channel_buffer("std", std, in_channels, 1.0))
        self.body = body
        self.he = bool(he)
        self.head: nn.Module = (HELinear(feature_dim, num_classes, weight_norm=weight_norm)
                                if self.he
                                else nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))

    def normalize(self, x: Tensor) -> Tensor:
        """(x - mean) / std per channel, in x's layout.

        On a channels_last x the channels are the fastest-moving dimension, and a broadcast
        of (1, C, 1, 1) over them runs element by element; the same subtraction and division
        run on image rows (W pixels × C channels) against mean and std tiled to that length
        (values and gradients bit for bit the same, 4× faster on CPU at C = 3, W = 32)."""
        if (x.dim() != 4 or x.shape[1] == 1 or _under_vmap(x) or x.is_contiguous()
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return (x - self.mean) / self.std
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)
        tiled = (rows - self.mean.view(c).repeat(w)) / self.std.view(c).repeat(w)
        return tiled.view(n, h, w, c).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
