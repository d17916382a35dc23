"""Per-example attack losses on logits (B, C) and labels (B,); each returns (B,) float32.

- ``ce``: cross-entropy on the logits as the model returns them (raw cosines for an HE
  head, so it depends on the logit scale).
- ``cw``: the CW margin max_{i≠y} z_i − z_y (positive once the example is misclassified).
- ``dlr``: −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12), π the descending order of the
  logits (Croce & Hein 2020); invariant to a positive rescaling of the logits, needs C ≥ 3.

The targeted DLR loss of APGD-T (:func:`dlr_targeted_loss`) also takes the target classes.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]
DLR_EPS = 1e-12


def _true_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true, others.amax(dim=1)


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per example on the unscaled logits."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def cw_loss(logits: Tensor, y: Tensor) -> Tensor:
    """CW margin max_{i≠y} z_i − z_y per example."""
    true, other = _true_and_best_other(logits.float(), y)
    return other - true


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)."""
    logits = logits.float()
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    true, other = _true_and_best_other(logits, y)
    top = logits.topk(3, dim=1).values
    return (other - true) / (top[:, 0] - top[:, 2] + DLR_EPS)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12) per example, t the
    target class (B,); scale-invariant like DLR, needs C ≥ 4."""
    logits = logits.float()
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    true = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    top = logits.topk(4, dim=1).values
    return (aimed - true) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS)


LOSSES: Dict[str, LossFn] = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss}


def get_loss(name: str) -> LossFn:
    """The per-example loss called ``name`` (one of LOSSES); ValueError otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}, expected one of {tuple(LOSSES)}")
    return LOSSES[name]
