"""APGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpoints.

Per example: the step starts at 2ε; x_{k+1} = P(x_k + a·(z − x_k) + (1 − a)·(x_k − x_{k−1}))
with z = P(x_k + η·step(∇)) the fused :func:`heat_fast.pgd_step`, a = 1 at the first step
and 0.75 after. Checkpoints sit at ⌈p_j·N⌉ with p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06). At a checkpoint the step is halved and the
iterate reset to the best point when fewer than 75% of the steps since the last checkpoint
increased the loss, or when the step was not halved at the last checkpoint and the best loss
has not grown since. APGD-CE uses the CE loss, APGD-DLR the (scale-invariant) DLR loss.

APGD-T (:class:`APGDT`, AutoAttack's targeted APGD) runs the same iteration on the targeted
DLR loss once per target class: the classes ranked 2, 3, ... by the clean logits (9 targets
in AutoAttack's standard version), each run on the examples still robust after the
previous ones.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from heat_fast.attacks.core import (BallAttack, WorstCase, check_count, keep_rows, loss_and_grad,
                                    target_runs)
from heat_fast.attacks.losses import dlr_targeted_loss, get_loss
from heat_fast.ops import pgd_step

MOMENTUM = 0.75
INCREASE_FRACTION = 0.75


def checkpoints(n_iter: int) -> set[int]:
    """Iteration counts after which APGD checks its step size."""
    p_prev, p, points = 0.0, 0.22, set()
    while p < 1.0:
        points.add(math.ceil(round(p * n_iter, 6)))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return {w for w in points if 0 < w < n_iter}


class APGD(BallAttack):
    """APGD with ``loss`` "ce" (APGD-CE) or "dlr" (APGD-DLR), ``steps`` iterations
    (100 in AutoAttack), random start, best of ``restarts``."""

    def __init__(self, eps: float, steps: int = 100, loss: str = "ce", norm: str = "linf",
                 restarts: int = 1, clip: Optional[Sequence[float]] = (0.0, 1.0), seed: int = 0,
                 backend: str = "auto"):
        super().__init__(eps, get_loss(loss), norm, restarts, True, clip, seed, backend)
        self.steps = check_count("steps", steps)
        self.checkpoints = checkpoints(self.steps)

    def _restart(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, idx: Tensor,
                 tracker: WorstCase, target: Optional[Tensor]) -> None:
        logits, loss, grad = loss_and_grad(model, self.loss_for(target), x_adv, y)
        robust = ~tracker.update(idx, x_adv, logits, loss)
        rows = {
            "idx": idx, "x": x, "y": y, "x_adv": x_adv, "x_prev": x_adv, "grad": grad,
            "x_best": x_adv, "grad_best": grad, "loss_best": loss, "loss_prev": loss,
            "loss_at_check": loss, "step": torch.full_like(loss, 2 * self.eps),
            "increases": torch.zeros_like(loss), "halved": torch.ones_like(loss, dtype=torch.bool),
        }
        if target is not None:
            rows["target"] = target
        last_check = 0
        for i in range(self.steps):
            if not bool(robust.any()):
                return
            rows = keep_rows(robust, rows)
            rows = self._step(rows, MOMENTUM if i > 0 else 1.0)
            logits, loss, grad = loss_and_grad(model, self.loss_for(rows.get("target")),
                                               rows["x_adv"], rows["y"],
                                               need_grad=i + 1 < self.steps)
            robust = ~tracker.update(rows["idx"], rows["x_adv"], logits, loss)
            self._record(rows, loss, grad)
            if i + 1 in self.checkpoints:
                self._checkpoint(rows, i + 1 - last_check)
                last_check = i + 1

    def _step(self, rows: dict, a: float) -> dict:
        x_adv, x = rows["x_adv"], rows["x"]
        z = pgd_step(x_adv, rows["grad"], x, self.eps, rows["step"], self.norm, self.clip,
                     backend=self.backend)
        moved = x_adv + a * (z - x_adv) + (1 - a) * (x_adv - rows["x_prev"])
        return {**rows, "x_prev": x_adv, "x_adv": self.project(moved, x)}

    @staticmethod
    def _record(rows: dict, loss: Tensor, grad: Optional[Tensor]) -> None:
        rows["increases"] = rows["increases"] + (loss > rows["loss_prev"]).float()
        rows["loss_prev"] = loss
        better = loss > rows["loss_best"]
        view = (-1,) + (1,) * (rows["x"].dim() - 1)
        rows["x_best"] = torch.where(better.view(view), rows["x_adv"], rows["x_best"])
        rows["loss_best"] = torch.where(better, loss, rows["loss_best"])
        if grad is not None:
            rows["grad"] = grad
            rows["grad_best"] = torch.where(better.view(view), grad, rows["grad_best"])

    @staticmethod
    def _checkpoint(rows: dict, since_last: int) -> None:
        stalled = ~rows["halved"] & (rows["loss_best"] <= rows["loss_at_check"])
        halve = (rows["increases"] < INCREASE_FRACTION * since_last) | stalled
        view = (-1,) + (1,) * (rows["x"].dim() - 1)
        rows["step"] = torch.where(halve, rows["step"] / 2, rows["step"])
        for name, best in (("x_adv", "x_best"), ("x_prev", "x_best"), ("grad", "grad_best")):
            rows[name] = torch.where(halve.view(view), rows[best], rows[name])
        rows["halved"] = halve
        rows["loss_at_check"] = rows["loss_best"]
        rows["increases"] = torch.zeros_like(rows["increases"])


class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss toward each of the ``targets`` classes ranked
    2 .. targets + 1 by the clean logits (at most C − 1; C ≥ 4), ``restarts`` runs per
    target; AutoAttack's standard version uses 100 steps, 9 targets, 1 restart."""

    def __init__(self, eps: float, steps: int = 100, targets: int = 9, norm: str = "linf",
                 restarts: int = 1, clip: Optional[Sequence[float]] = (0.0, 1.0), seed: int = 0,
                 backend: str = "auto"):
        super().__init__(eps, steps, "dlr", norm, restarts, clip, seed, backend)
        self.loss_fn = dlr_targeted_loss
        self.targets = check_count("targets", targets)

    def run_targets(self, clean_logits: Tensor) -> List[Optional[Tensor]]:
        if clean_logits.shape[1] < 4:
            raise ValueError("APGD-T's targeted DLR loss needs at least 4 classes, "
                             f"got {clean_logits.shape[1]}")
        return target_runs(clean_logits, self.targets, self.restarts)
