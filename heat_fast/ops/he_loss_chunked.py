"""The large-class HE cross-entropy (SPEC §2.1): chunked over classes, never the B×C logits.

For face-recognition and ImageNet-21k-scale heads the (B, C) float32 buffers of the fused
loss (logits, dloss/dcos) outgrow everything else: 512 MiB at B 1024, C 131072. The chunked
path forms the feature and class norms once, then per chunk of classes the cosines, the
margin on the target class and an online log-sum-exp per row; its backward recomputes each
chunk's cosines and accumulates d_features and d_weight. Memory beyond the inputs and their
gradients is O(B·chunk + B·D + C); the cost is one more product than the unchunked path's
three (the backward recomputes the cosines).

Selection (:func:`chunk_for`): ``chunked=None`` takes the chunked path when the head has at
least ``CHUNKED_MIN_CLASSES`` classes or its (B, C) float32 buffer would reach
``CHUNKED_MIN_BYTES``; ``chunked=True`` / ``False`` forces either path, and an int forces the
chunked path with that many classes per chunk. The reference backend is the unchunked
specification and has no chunked path.

Fast backends implement two kernel functions (all tensors contiguous):

``he_ce_chunked_forward(features (B,D), weight (C,D), target (B,) int64, scale, margin,
label_smoothing, feature_norm, weight_norm, chunk) -> (loss_rows, lse, target_grad,
feature_norms, weight_norms)``
    loss_rows f32 (B,) as he_ce_forward's; lse f32 (B,): log Σ_j e^{z_j} of each row's
    margin logits z; target_grad f32 (B,): dloss_row/dcos_y = s·(p_y − (1 − ε) − ε/C),
    formed as s·(ε − ε/C − Σ_{j≠y} p_j) so that it does not cancel when p_y → 1;
    feature_norms (B,), weight_norms (C,): the raw L2 norms (1 where the normalization is
    off). ``chunk``: classes per chunk, 0 for the backend's choice. float64 inputs give
    float64 outputs.

``he_ce_chunked_backward(grad_rows (B,), features, weight, target, lse, target_grad,
feature_norms, weight_norms, scale, label_smoothing, feature_norm, weight_norm, chunk)
-> (d_features, d_weight)`` in each input's dtype: the gradients of Σ_b grad_rows[b]·loss_rows[b],
    with dloss_row_b/dcos_bj = s·(e^{z_bj − lse_b} − ε/C) for j ≠ y_b and target_grad[b] for
    j = y_b, through both normalizations (as he_ce_backward's).

They are wrapped as the torch custom ops ``heat_fast::he_ce_chunked_forward`` and
``heat_fast::he_ce_chunked_backward`` (fake implementations, autograd), which take the backend
name as their last argument.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from heat_fast import _checks
from heat_fast.ops.dispatch import kernels

CHUNKED_MIN_CLASSES = 32768
CHUNKED_MIN_BYTES = 256 * 2**20
Chunked = Union[None, bool, int]


def check_chunked(chunked: Chunked) -> None:
    """``chunked`` must be None, a bool or a positive number of classes per chunk."""
    if chunked is None or isinstance(chunked, bool):
        return
    if not isinstance(chunked, int) or chunked < 1:
        raise ValueError("chunked must be None (automatic), True, False or a positive number "
                         f"of classes per chunk, got {chunked!r}")


def chunk_for(batch: int, classes: int, chunked: Chunked) -> Optional[int]:
    """Classes per chunk for the chunked path (0: the backend's choice), or None for the
    unchunked one: ``chunked=None`` picks the chunked path from ``CHUNKED_MIN_CLASSES`` and
    ``CHUNKED_MIN_BYTES`` (see the module docstring)."""
    check_chunked(chunked)
    if chunked is None:
        chunked = classes >= CHUNKED_MIN_CLASSES or batch * classes * 4 >= CHUNKED_MIN_BYTES
    if chunked is False:
        return None
    return 0 if chunked is True else int(chunked)


def _check_op_inputs(features: Tensor, weight: Tensor, target: Tensor, chunk: int,
                     backend: str) -> None:
    """The ops' own argument checks (they are public through torch.ops): shapes, dtypes and
    devices, labels on the host for CPU tensors (the native CPU kernels check them themselves,
    the GPU kernels assert on the device), chunk >= 0."""
    _checks.check_he_inputs(features, weight, target,
                            check_labels=features.device.type == "cpu" and backend != "native")
    if chunk < 0:
        raise ValueError(f"chunk must be >= 0 (0: the backend's choice), got {chunk}")


def _stat_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@torch.library.custom_op("heat_fast::he_ce_chunked_forward", mutates_args=())
def he_ce_chunked_forward_op(
    features: Tensor, weight: Tensor, target: Tensor, scale: float, margin: float,
    label_smoothing: float, feature_norm: bool, weight_norm: bool, chunk: int, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Chunked HE cross-entropy forward of ``backend`` (see the module docstring)."""
    _check_op_inputs(features, weight, target, chunk, backend)
    _checks.check_scale_margin(scale, margin, label_smoothing)
    return kernels(backend).he_ce_chunked_forward(
        features, weight, target, scale, margin, label_smoothing, feature_norm, weight_norm,
        chunk,
    )


@he_ce_chunked_forward_op.register_fake
def _forward_fake(features, weight, target, scale, margin, label_smoothing, feature_norm,
                  weight_norm, chunk, backend):
    dtype = _stat_dtype(features)
    batch, classes = features.shape[0], weight.shape[0]
    rows = [features.new_empty((batch,), dtype=dtype) for _ in range(4)]
    return rows[0], rows[1], rows[2], rows[3], features.new_empty((classes,), dtype=dtype)


@torch.library.custom_op("heat_fast::he_ce_chunked_backward", mutates_args=())
def he_ce_chunked_backward_op(
    grad_rows: Tensor, features: Tensor, weight: Tensor, target: Tensor, lse: Tensor,
    target_grad: Tensor, feature_norms: Tensor, weight_norms: Tensor, scale: float,
    label_smoothing: float, feature_norm: bool, weight_norm: bool, chunk: int, backend: str,
) -> Tuple[Tensor, Tensor]:
    """Chunked HE cross-entropy backward of ``backend`` (see the module docstring)."""
    _check_op_inputs(features, weight, target, chunk, backend)
    batch, classes = features.shape[0], weight.shape[0]
    for name, t, size in (("grad_rows", grad_rows, batch), ("lse", lse, batch),
                          ("target_grad", target_grad, batch),
                          ("feature_norms", feature_norms, batch),
                          ("weight_norms", weight_norms, classes)):
        _checks.check_float(name, t)
        if tuple(t.shape) != (size,) or t.device != features.device:
            raise ValueError(f"{name} must have shape ({size},) on {features.device}, got "
                             f"{tuple(t.shape)} on {t.device}")
    return kernels(backend).he_ce_chunked_backward(
        grad_rows, features, weight, target, lse, target_grad, feature_norms, weight_norms,
        scale, label_smoothing, feature_norm, weight_norm, chunk,
    )


@he_ce_chunked_backward_op.register_fake
def _backward_fake(grad_rows, features, weight, target, lse, target_grad, feature_norms,
                   weight_norms, scale, label_smoothing, feature_norm, weight_norm, chunk,
                   backend):
    return torch.empty_like(features), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    (features, weight, target, scale, _, label_smoothing, feature_norm, weight_norm, chunk,
     backend) = inputs
    _, lse, target_grad, feature_norms, weight_norms = output
    ctx.save_for_backward(features, weight, target, lse, target_grad, feature_norms,
                          weight_norms)
    ctx.options = (scale, label_smoothing, feature_norm, weight_norm, chunk, backend)


def _backward(ctx, grad_rows, *_stats):
    saved = ctx.saved_tensors
    d_features, d_weight = he_ce_chunked_backward_op(
        grad_rows.to(saved[3].dtype).contiguous(), *saved, *ctx.options)
    return d_features, d_weight, None, None, None, None, None, None, None, None


torch.library.register_autograd(
    "heat_fast::he_ce_chunked_forward", _backward, setup_context=_setup_context
)
