"""HE logits and cosine-margin cross-entropy: public functions and custom ops.

Fast backends implement two kernel functions (all tensors contiguous):

``he_ce_forward(features (B,D), weight (C,D), target (B,) int64, scale, margin,
label_smoothing, feature_norm, weight_norm) -> (loss_rows, grad_cos, feature_norms,
weight_norms)``
    loss_rows f32 (B,): per-example loss; grad_cos f32 (B, C): dloss_rows[i]/dcos[i, j];
    feature_norms f32 (B,), weight_norms f32 (C,): the raw L2 row norms (1 where the
    normalization is off). float64 inputs give float64 outputs.

``he_ce_backward(grad_rows (B,), features, weight, grad_cos, feature_norms, weight_norms,
feature_norm, weight_norm) -> (d_features, d_weight)`` in each input's dtype, with
    G = grad_rows[:, None] · grad_cos,
    d_features = (G W̃ − x̃ ⊙ rowsum(x̃ ⊙ G W̃)) / ‖x‖  (when ‖x‖ > 1e-12; else G W̃ / 1e-12),
    and the same for each weight row with Gᵀ x̃.

They are wrapped as the torch custom ops ``heat_fast::he_ce_forward`` and
``heat_fast::he_ce_backward`` (with fake implementations and autograd), which take the
backend name as their last argument. The native backend has its own dispatcher op
``heat_fast_C::he_cross_entropy``, the reduced loss with its autograd in C++, which
:func:`he_cross_entropy` calls directly, skipping this Python layer and the separate
reduction (fwd+bwd of B128 D640 C10 on a 2-core CPU: 0.21 instead of 0.40 ms). The
reference backend is plain torch autograd. Heads with many classes take the chunked path of
heat_fast.ops.he_loss_chunked instead, which never holds (B, C) buffers.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from heat_fast import _checks, native, reference
from heat_fast.ops.dispatch import kernels, resolve_backend
from heat_fast.ops.he_loss_chunked import (
    Chunked, check_chunked, chunk_for, he_ce_chunked_forward_op,
)


def _stat_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@torch.library.custom_op("heat_fast::he_ce_forward", mutates_args=())
def he_ce_forward_op(
    features: Tensor, weight: Tensor, target: Tensor, scale: float, margin: float,
    label_smoothing: float, feature_norm: bool, weight_norm: bool, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused HE cross-entropy forward of ``backend`` (see the module docstring)."""
    _checks.check_he_inputs(features, weight, target,
                            check_labels=features.device.type == "cpu" and backend != "native")
    _checks.check_scale_margin(scale, margin, label_smoothing)
    return kernels(backend).he_ce_forward(
        features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm
    )


@he_ce_forward_op.register_fake
def _he_ce_forward_fake(features, weight, target, scale, margin, label_smoothing,
                        feature_norm, weight_norm, backend):
    dtype = _stat_dtype(features)
    batch, classes = features.shape[0], weight.shape[0]
    return (
        features.new_empty((batch,), dtype=dtype),
        features.new_empty((batch, classes), dtype=dtype),
        features.new_empty((batch,), dtype=dtype),
        features.new_empty((classes,), dtype=dtype),
    )


@torch.library.custom_op("heat_fast::he_ce_backward", mutates_args=())
def he_ce_backward_op(
    grad_rows: Tensor, features: Tensor, weight: Tensor, grad_cos: Tensor,
    feature_norms: Tensor, weight_norms: Tensor, feature_norm: bool, weight_norm: bool,
    backend: str,
) -> Tuple[Tensor, Tensor]:
    """Fused HE cross-entropy backward of ``backend`` (see the module docstring)."""
    _checks.check_he_inputs(features, weight, None)
    batch, classes = features.shape[0], weight.shape[0]
    for name, t, shape in (("grad_rows", grad_rows, (batch,)), ("grad_cos", grad_cos,
                           (batch, classes)), ("feature_norms", feature_norms, (batch,)),
                           ("weight_norms", weight_norms, (classes,))):
        _checks.check_float(name, t)
        if tuple(t.shape) != shape or t.device != features.device:
            raise ValueError(f"{name} must have shape {shape} on {features.device}, got "
                             f"{tuple(t.shape)} on {t.device}")
    return kernels(backend).he_ce_backward(
        grad_rows, features, weight, grad_cos, feature_norms, weight_norms,
        feature_norm, weight_norm,
    )


@he_ce_backward_op.register_fake
def _he_ce_backward_fake(grad_rows, features, weight, grad_cos, feature_norms, weight_norms,
                         feature_norm, weight_norm, backend):
    return torch.empty_like(features), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    features, weight, _, _, _, _, feature_norm, weight_norm, backend = inputs
    _, grad_cos, feature_norms, weight_norms = output
    ctx.save_for_backward(features, weight, grad_cos, feature_norms, weight_norms)
    ctx.options = (feature_norm, weight_norm, backend)


def _backward(ctx, grad_rows, _grad_cos, _fn, _wn):
    features, weight, grad_cos, feature_norms, weight_norms = ctx.saved_tensors
    feature_norm, weight_norm, backend = ctx.options
    d_features, d_weight = he_ce_backward_op(
        grad_rows.to(grad_cos.dtype).contiguous(), features, weight, grad_cos,
        feature_norms, weight_norms, feature_norm, weight_norm, backend,
    )
    return d_features, d_weight, None, None, None, None, None, None, None


torch.library.register_autograd(
    "heat_fast::he_ce_forward", _backward, setup_context=_setup_context
)


def he_logits(
    features: Tensor,
    weight: Tensor,
    scale: float = 1.0,
    margin: float = 0.0,
    target: Optional[Tensor] = None,
    feature_norm: bool = True,
    weight_norm: reference.WeightNorm = True,
) -> Tensor:
    """HE logits s · (cos θ − m · onehot(target)).

    features (B, D) and weight (C, D) float32/16/bf16 (64); target (B,) int64 in [0, C),
    required when margin != 0. Returns float32 (B, C) (float64 for float64 inputs),
    differentiable w.r.t. features and weight through both normalizations. ``weight_norm``
    True, False or "project" (AT_HE's in-place form: reference.resolve_weight_norm). The head
    is GEMM-bound, so it is plain torch ops on every device (no ``backend`` argument).
    """
    return reference.he_logits(features, weight, scale, margin, target, feature_norm, weight_norm)


def he_cross_entropy(
    features: Tensor,
    weight: Tensor,
    target: Tensor,
    scale: float = 15.0,
    margin: float = 0.2,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    feature_norm: bool = True,
    weight_norm: reference.WeightNorm = True,
    backend: Optional[str] = "auto",
    chunked: Chunked = None,
) -> Tensor:
    """Cosine-margin cross-entropy CE(s · (cos θ − m · onehot(y)), y) of SPEC §2.1.

    features (B, D), weight (C, D): float32, float16 or bfloat16 (float64 for gradcheck),
    any strides; target (B,) integer labels in [0, C). Returns a float32 scalar
    ("mean", "sum") or (B,) ("none"); gradients flow to features and weight in their own
    dtypes. ``label_smoothing`` follows torch.nn.functional.cross_entropy. ``weight_norm``:
    True (differentiable), False, or "project" — AT_HE's form: the stored weight rows are
    renormalized in place and used without a normalization backward
    (reference.resolve_weight_norm). ``backend``: "auto", "reference", "triton" or
    "native" (SPEC §2.3). ``chunked``: None picks the path that never holds (B, C) buffers
    for heads of at least 32768 classes or a (B, C) float32 buffer of 256 MiB or more; True /
    False forces the chunked / unchunked path, an int the chunked path with that many
    classes per chunk (heat_fast.ops.he_loss_chunked). The reference backend is unchunked.
    """
    _checks.check_reduction(reduction)
    _checks.check_scale_margin(scale, margin, label_smoothing)
    _checks.check_float("features", features)
    device = features.device
    name = resolve_backend(backend, device, features.dtype)
    check_chunked(chunked)
    if name == "reference" and chunked not in (None, False):
        raise ValueError(f"chunked={chunked!r} needs the triton or native backend: the "
                         "reference backend is the unchunked specification")
    # Labels are range-checked on the host for CPU tensors (the native CPU kernel does it
    # itself, with the same ValueError) and inside the kernels on the GPU (a device assert,
    # as torch's own cross-entropy does): no extra launches, no host synchronisation.
    target = _checks.check_he_inputs(
        features, weight, target, check_labels=device.type == "cpu" and name != "native")
    weight_norm = reference.resolve_weight_norm(weight, weight_norm)
    if name == "reference":
        return reference.he_cross_entropy(
            features, weight, target, scale, margin, reduction, label_smoothing,
            feature_norm, weight_norm,
        )
    args = (features.contiguous(), weight.contiguous(), target.contiguous(), float(scale),
            float(margin), float(label_smoothing), bool(feature_norm), bool(weight_norm))
    chunk = chunk_for(features.shape[0], weight.shape[0], chunked)
    if chunk is not None:
        loss_rows = he_ce_chunked_forward_op(*args, chunk, name)[0]
    elif name == "native":
        return native.he_cross_entropy(*args, reduction)
    else:
        loss_rows = he_ce_forward_op(*args, name)[0]
    if reduction == "mean":
        return loss_rows.mean()
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows
