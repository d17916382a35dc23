"""The cosine-margin cross-entropy of cosines a model already formed (AT_HE-, BoT- and
FreeAT-HE-style models return cos or s·cos): CE(s · (cos − m · onehot(y)), y), O(B·C).

Fast backends implement one kernel function:

``cos_ce_forward(cos (B, C), target (B,) int64, scale, margin, label_smoothing) ->
(loss_rows, grad_cos)``
    loss_rows float32 (B,); grad_cos float32 (B, C): dloss_rows[i]/dcos[i, j] (float64 for
    float64 cosines). The loss is formed as log1p(Σ_{j≠y} exp(z_j − z_y)) and the true-class
    gradient as −Σ_{j≠y} p_j, so neither cancels when p_y → 1.

It is wrapped as the custom op ``heat_fast::cos_ce_forward`` (fake implementation, autograd:
dcos = dloss_rows[:, None] · grad_cos, in cos's dtype), which takes the backend name as its
last argument. The reference is heat_fast.reference.cos_margin_cross_entropy.

Label smoothing follows torch (the target gets 1 − ε + ε/C, every other class ε/C). Code that
spreads ε_o over the C − 1 other classes (target 1 − ε_o, others ε_o/(C − 1), as Bag of Tricks
for AT's LabelSmoothLoss does) gets the same loss with label_smoothing = ε_o · C / (C − 1):
see :func:`smoothing_from_other_classes`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from heat_fast import _checks, reference
from heat_fast.ops.dispatch import kernels, resolve_backend


@torch.library.custom_op("heat_fast::cos_ce_forward", mutates_args=())
def cos_ce_forward_op(cos: Tensor, target: Tensor, scale: float, margin: float,
                      label_smoothing: float, backend: str) -> Tuple[Tensor, Tensor]:
    """Cosine-margin cross-entropy rows and dL/dcos of ``backend`` (module docstring)."""
    _checks.check_cos_inputs(cos, target, check_labels=cos.device.type == "cpu")
    _checks.check_scale_margin(scale, margin, label_smoothing)
    return kernels(backend).cos_ce_forward(cos, target, scale, margin, label_smoothing)


@cos_ce_forward_op.register_fake
def _cos_ce_forward_fake(cos, target, scale, margin, label_smoothing, backend):
    dtype = torch.float64 if cos.dtype == torch.float64 else torch.float32
    return cos.new_empty((cos.shape[0],), dtype=dtype), cos.new_empty(cos.shape, dtype=dtype)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.cos_dtype = inputs[0].dtype


def _backward(ctx, grad_rows, _grad_cos):
    (grad_cos,) = ctx.saved_tensors
    d_cos = (grad_rows.to(grad_cos.dtype)[:, None] * grad_cos).to(ctx.cos_dtype)
    return d_cos, None, None, None, None, None


torch.library.register_autograd("heat_fast::cos_ce_forward", _backward,
                                setup_context=_setup_context)


def cos_margin_cross_entropy(
    cos: Tensor,
    target: Tensor,
    scale: float = 15.0,
    margin: float = 0.2,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    backend: Optional[str] = "auto",
) -> Tensor:
    """CE(s · (cos − m · onehot(y)), y) of cosines (B, C) in [−1, 1] a model already formed.

    For a model that returns s₀·cos, pass ``cos / s₀`` or fold s₀ into ``scale`` and
    ``margin`` (CE(s · (s₀cos − m'·onehot)) with m' = s₀·m). cos: float32/16/bf16 (float64
    for gradcheck), any strides; target (B,) in [0, C). Returns a float32 scalar ("mean",
    "sum") or (B,) ("none"); the gradient flows to cos in its dtype. ``label_smoothing``
    follows torch (module docstring for the other convention). ``backend``: "auto",
    "reference", "triton" or "native".
    """
    _checks.check_reduction(reduction)
    _checks.check_scale_margin(scale, margin, label_smoothing)
    _checks.check_float("cos", cos)
    name = resolve_backend(backend, cos.device, cos.dtype)
    if name == "reference":
        return reference.cos_margin_cross_entropy(cos, target, scale, margin, reduction,
                                                  label_smoothing)
    target = _checks.check_cos_inputs(cos, target, check_labels=cos.device.type == "cpu")
    loss_rows = cos_ce_forward_op(cos.contiguous(), target.contiguous(), float(scale),
                                  float(margin), float(label_smoothing), name)[0]
    if reduction == "mean":
        return loss_rows.mean()
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows


def smoothing_from_other_classes(smoothing: float, num_classes: int) -> float:
    """torch's label_smoothing that equals spreading ``smoothing`` over the other classes only
    (target 1 − ε_o, every other class ε_o/(C − 1)): ε_o · C / (C − 1)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return smoothing * num_classes / (num_classes - 1)
