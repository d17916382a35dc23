"""Reference HE logits and cosine-margin cross-entropy (SPEC §2.1), in plain torch.

    x̃ = x / max(‖x‖, 1e-12)          (feature normalization, FN)
    W̃_c = W_c / max(‖W_c‖, 1e-12)    (weight normalization, WN)
    cos θ = x̃ · W̃ᵀ
    logits = s · (cos θ − m · onehot(y))
    L = CE(logits, y)                  (cos_margin_cross_entropy, also for cosines a model forms)

All math runs in float32, also inside torch.autocast (float64 stays float64, so gradcheck can
use this path).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from heat_fast import _checks

NORM_EPS = 1e-12


def _math_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


WeightNorm = Union[bool, str]
WEIGHT_NORMS = (True, False, "project")


def resolve_weight_norm(weight: torch.Tensor, weight_norm: WeightNorm) -> bool:
    """Applies the weight-normalization mode and returns whether the math normalizes W.

    True: W̃ = W / max(‖W‖, eps) inside the op, differentiable (SPEC §2.1). False: W as is.
    "project" (the public HE code's form): W's rows are renormalized in place first, as
    AT_HE's model overwrites ``fc.weight.data`` on every forward, and then used as they are,
    so the stored weight stays unit-norm and its gradient is dL/dW̃ with no normalization
    backward. ``weight`` must then be a leaf tensor (a parameter).
    """
    if weight_norm == "project":
        with torch.no_grad():
            unit = F.normalize(weight.to(_math_dtype(weight)), dim=1, eps=NORM_EPS)
            weight.copy_(unit)
        return False
    if weight_norm is True or weight_norm is False:
        return weight_norm
    raise ValueError(f"weight_norm must be True, False or 'project', got {weight_norm!r}")


def _matmul_in_own_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in a's dtype, also inside a torch.autocast region (which would run it in 16 bits)."""
    device = a.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return a @ b
    return a @ b


def he_logits(
    features: torch.Tensor,
    weight: torch.Tensor,
    scale: float = 1.0,
    margin: float = 0.0,
    target: Optional[torch.Tensor] = None,
    feature_norm: bool = True,
    weight_norm: WeightNorm = True,
) -> torch.Tensor:
    """s · (cos θ − m · onehot(target)) as a float32 (B, C) tensor (float64 for float64 inputs)."""
    target = _checks.check_he_inputs(features, weight, target)
    _checks.check_scale_margin(scale, margin)
    if margin != 0 and target is None:
        raise ValueError("target is required when margin != 0 (the margin applies to the target class)")
    weight_norm = resolve_weight_norm(weight, weight_norm)
    dtype = _math_dtype(features)
    x = features.to(dtype)
    w = weight.to(dtype)
    if feature_norm:
        x = F.normalize(x, dim=1, eps=NORM_EPS)
    if weight_norm:
        w = F.normalize(w, dim=1, eps=NORM_EPS)
    cos = _matmul_in_own_dtype(x, w.t())
    if margin != 0:
        cos = cos - margin * F.one_hot(target, weight.shape[0]).to(dtype)
    return scale * cos


def cos_margin_cross_entropy(
    cos: torch.Tensor,
    target: torch.Tensor,
    scale: float = 15.0,
    margin: float = 0.2,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """CE(s · (cos − m · onehot(y)), y) of cosines (B, C) a model already formed; float32."""
    _checks.check_reduction(reduction)
    _checks.check_scale_margin(scale, margin, label_smoothing)
    target = _checks.check_cos_inputs(cos, target)
    dtype = _math_dtype(cos)
    logits = scale * (cos.to(dtype) - margin * F.one_hot(target, cos.shape[1]).to(dtype))
    return F.cross_entropy(logits, target, reduction=reduction, label_smoothing=label_smoothing)


def he_cross_entropy(
    features: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    scale: float = 15.0,
    margin: float = 0.2,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    feature_norm: bool = True,
    weight_norm: WeightNorm = True,
) -> torch.Tensor:
    """CE(s · (cos θ − m · onehot(y)), y): a float32 scalar, or (B,) for reduction="none"."""
    cos = he_logits(features, weight, feature_norm=feature_norm, weight_norm=weight_norm)
    return cos_margin_cross_entropy(cos, target, scale, margin, reduction, label_smoothing)
