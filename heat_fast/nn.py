"""nn.Modules for hypersphere embedding: the bias-free HE head and the cosine-margin loss."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from heat_fast import _checks
from heat_fast.ops import cos_margin_cross_entropy, he_cross_entropy, he_logits
from heat_fast.ops.he_loss_chunked import Chunked, check_chunked


class HELinear(nn.Module):
    """Bias-free cosine head: returns scale · cos θ (B, C) with cos θ = x̃ · W̃ᵀ.

    ``weight`` has shape (out_features, in_features). With the default scale 1 the module
    returns raw cosines, as the public HE code does (s and m live in the losses).
    ``weight_norm="project"`` keeps the stored weight unit-norm the way AT_HE's models do
    (rows renormalized in place on every forward, no gradient through the normalization);
    the default differentiates through it. Output is float32 (float64 for float64 inputs).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0,
                 feature_norm: bool = True, weight_norm: Union[bool, str] = True,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        if in_features < 1 or out_features < 2:
            raise ValueError(
                f"HELinear needs in_features >= 1 and out_features >= 2, got {in_features}, {out_features}"
            )
        _checks.check_scale_margin(scale, 0.0)
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(scale)
        if weight_norm not in (True, False, "project"):
            raise ValueError(f"weight_norm must be True, False or 'project', got {weight_norm!r}")
        self.feature_norm = feature_norm
        self.weight_norm = weight_norm
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, features: Tensor) -> Tensor:
        return he_logits(features, self.weight, self.scale, 0.0, None,
                         self.feature_norm, self.weight_norm)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


class HECrossEntropyLoss(nn.Module):
    """CE(s · (cos θ − m · onehot(y)), y) on features and an HE weight (SPEC §2.1).

    ``forward(features (B, D), weight (C, D), target (B,))``; pass ``head.weight`` of an
    :class:`HELinear`. ``backend`` and ``chunked`` (the large-class path that never holds
    (B, C) buffers: None automatic, True / False forced, an int classes per chunk) as in
    :func:`heat_fast.he_cross_entropy`.
    """

    def __init__(self, scale: float = 15.0, margin: float = 0.2, reduction: str = "mean",
                 label_smoothing: float = 0.0, feature_norm: bool = True,
                 weight_norm: Union[bool, str] = True, backend: str = "auto",
                 chunked: Chunked = None):
        super().__init__()
        _checks.check_scale_margin(scale, margin, label_smoothing)
        _checks.check_reduction(reduction)
        self.scale, self.margin = float(scale), float(margin)
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)
        self.feature_norm, self.weight_norm = feature_norm, weight_norm
        self.backend = backend
        check_chunked(chunked)
        self.chunked = chunked

    def forward(self, features: Tensor, weight: Tensor, target: Tensor) -> Tensor:
        return he_cross_entropy(features, weight, target, self.scale, self.margin,
                                self.reduction, self.label_smoothing, self.feature_norm,
                                self.weight_norm, self.backend, self.chunked)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}, reduction={self.reduction!r}"


class CosineMarginLoss(nn.Module):
    """CE(s · (cos − m · onehot(y)), y) on cosines (B, C) a model already formed.

    ``forward(cos (B, C), target (B,))``; see :func:`heat_fast.cos_margin_cross_entropy`.
    """

    def __init__(self, scale: float = 15.0, margin: float = 0.2, reduction: str = "mean",
                 label_smoothing: float = 0.0, backend: str = "auto"):
        super().__init__()
        _checks.check_scale_margin(scale, margin, label_smoothing)
        _checks.check_reduction(reduction)
        self.scale, self.margin = float(scale), float(margin)
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)
        self.backend = backend

    def forward(self, cos: Tensor, target: Tensor) -> Tensor:
        return cos_margin_cross_entropy(cos, target, self.scale, self.margin, self.reduction,
                                        self.label_smoothing, self.backend)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}, reduction={self.reduction!r}"
