"""Argument validation shared by every backend.

Each check raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad dtype) with a
message that names the argument and says what was expected. Checks that would need the
values of a device tensor (label range, negative per-sample eps) run on the host only for
CPU tensors outside ``torch.compile``; elsewhere they become asynchronous device asserts so
that the ops never synchronise with the host.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def _host_checkable(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}"
        )


def check_same_device(**tensors: Optional[torch.Tensor]) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")


def check_target(target: torch.Tensor, batch: int, num_classes: int,
                 check_range: bool = True) -> torch.Tensor:
    """Validate class labels (B,) in [0, C) and return them as int64.

    ``check_range=False`` leaves the label range to a kernel that checks it itself (with the
    same ValueError), which saves a pass over the labels.
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype != torch.int64:
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices (int64), got {target.dtype}")
        target = target.long()
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(
            f"target must have shape ({batch},) to match features, got {tuple(target.shape)}"
        )
    if batch == 0 or not check_range:
        return target
    if _host_checkable(target):
        lo, hi = (int(v) for v in torch.aminmax(target))
        if lo < 0 or hi >= num_classes:
            raise ValueError(label_error(lo if lo < 0 else hi, num_classes))
    else:
        ok = (target >= 0).all() & (target < num_classes).all()
        torch._assert_async(ok, f"target labels must lie in [0, {num_classes})")
    return target


def label_error(label: int, num_classes: int) -> str:
    """The message for a label outside [0, C) (the native kernels raise the same)."""
    return (f"target holds label {label}, expected labels in [0, {num_classes}) "
            f"for weight with {num_classes} classes")


def check_he_inputs(
    features: torch.Tensor, weight: torch.Tensor, target: Optional[torch.Tensor],
    check_labels: bool = True,
) -> Optional[torch.Tensor]:
    """Validate HE head inputs: features (B, D), weight (C, D), target (B,) in [0, C).

    Returns target as int64 (None stays None). ``check_labels=False``: see check_target.
    """
    check_float("features", features)
    check_float("weight", weight)
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (B, D), got shape {tuple(features.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (C, D), got shape {tuple(weight.shape)}")
    (batch, dim), classes = features.shape, weight.shape[0]
    if weight.shape[1] != dim:
        raise ValueError(
            f"weight must have D = {dim} columns to match features, "
            f"got shape {tuple(weight.shape)}"
        )
    if batch < 1 or dim < 1:
        raise ValueError(f"features must have B >= 1 and D >= 1, got shape {tuple(features.shape)}")
    if classes < 2:
        raise ValueError(f"weight must have C >= 2 class rows, got shape {tuple(weight.shape)}")
    device = features.device
    if target is not None and not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got "
                        f"{type(target).__name__}")
    if weight.device != device or (target is not None and target.device != device):
        check_same_device(features=features, weight=weight, target=target)
    if target is None:
        return None
    return check_target(target, batch, classes, check_labels)


def check_cos_inputs(cos: torch.Tensor, target: torch.Tensor,
                     check_labels: bool = True) -> torch.Tensor:
    """Cosines (B, C) with B >= 1 and C >= 2 and target (B,) in [0, C); returns target int64."""
    check_float("cos", cos)
    if cos.dim() != 2 or cos.shape[0] < 1 or cos.shape[1] < 2:
        raise ValueError(f"cos must have shape (B, C) with B >= 1 and C >= 2, "
                         f"got {tuple(cos.shape)}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got "
                        f"{type(target).__name__}")
    check_same_device(cos=cos, target=target)
    return check_target(target, cos.shape[0], cos.shape[1], check_labels)


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_scale_margin(scale: float, margin: float, label_smoothing: float = 0.0) -> None:
    """s finite and > 0, m finite and >= 0, label smoothing in [0, 1]; all real numbers."""
    if not 0 < _real("scale", scale) < float("inf"):
        raise ValueError(f"scale must be > 0 and finite, got {scale}")
    if not 0 <= _real("margin", margin) < float("inf"):
        raise ValueError(f"margin must be >= 0 and finite, got {margin}")
    if not 0.0 <= _real("label_smoothing", label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_norm(norm: str) -> str:
    """'linf' or 'l2' from any of their spellings (heat_fast._step_args.canonical_norm)."""
    from heat_fast._step_args import canonical_norm

    return canonical_norm(norm)


def check_clip(clip: Optional[Sequence[float]]) -> Tuple[float, float]:
    """Return the box as (lo, hi) floats; None means no box (±inf)."""
    if clip is None:
        return float("-inf"), float("inf")
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ValueError(f"clip must be None or a pair (lo, hi) of floats, got {clip!r}") from None
    if not lo <= hi:
        raise ValueError(f"clip must satisfy lo <= hi, got {clip!r}")
    return lo, hi


def check_generator(generator: Optional[torch.Generator], like: torch.Tensor) -> None:
    """A generator must live on the tensors' device: drawing on another device and copying
    would synchronise with the host (and breaks CUDA graph capture)."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device
    if device.type != like.device.type or (device.type == "cuda" and
                                           device.index != like.device.index):
        raise ValueError(
            f"generator is on {device} but x_nat is on {like.device}: pass "
            f"torch.Generator(device={str(like.device)!r})"
        )
