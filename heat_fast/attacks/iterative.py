"""The iteration core of the gradient-sign family (FGSM, PGD, MIM).

Each step evaluates the current point (logits, loss, input gradient), records it in the
worst-case tracker, drops the rows it fooled, and moves the rest with the fused
:func:`heat_fast.pgd_step` along :meth:`IterativeAttack.direction`. The step size is fixed
(not derived from ``steps``), so a run with more steps visits the same points first.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from torch import Tensor, nn

from heat_fast.attacks.core import BallAttack, WorstCase, check_count, check_eps, keep_rows, loss_and_grad
from heat_fast.attacks.losses import get_loss
from heat_fast.ops import pgd_step


class IterativeAttack(BallAttack):
    """``steps`` projected steps of size ``alpha`` (default ε/4) on ``loss`` ("ce", "cw",
    "dlr"), from a uniform random start in the ball when ``random_start``, best of
    ``restarts`` per example."""

    def __init__(self, eps: float, steps: int, alpha: Optional[float] = None, loss: str = "ce",
                 norm: str = "linf", restarts: int = 1, random_start: bool = True,
                 clip: Optional[Sequence[float]] = (0.0, 1.0), seed: int = 0,
                 backend: str = "auto"):
        super().__init__(eps, get_loss(loss), norm, restarts, random_start, clip,
                         seed, backend)
        self.steps = check_count("steps", steps)
        self.alpha = self.eps / 4 if alpha is None else check_eps(alpha, "alpha")

    def init_state(self, x_adv: Tensor) -> Dict[str, Tensor]:
        """Extra per-example state of the direction rule (none for plain PGD)."""
        return {}

    def direction(self, grad: Tensor, state: Dict[str, Tensor]) -> Tensor:
        """The ascent direction handed to pgd_step (the gradient for plain PGD)."""
        return grad

    def _restart(self, model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, idx: Tensor,
                 tracker: WorstCase, target: Optional[Tensor]) -> None:
        rows = {"idx": idx, "x": x, "y": y, "x_adv": x_adv, **self.init_state(x_adv)}
        if target is not None:
            rows["target"] = target
        for step in range(self.steps + 1):
            last = step == self.steps
            logits, loss, grad = loss_and_grad(model, self.loss_for(rows.get("target")),
                                               rows["x_adv"], rows["y"], need_grad=not last)
            robust = ~tracker.update(rows["idx"], rows["x_adv"], logits, loss)
            if last or not bool(robust.any()):
                return
            rows = keep_rows(robust, {**rows, "grad": grad})
            ascent = self.direction(rows.pop("grad"), rows)
            rows["x_adv"] = pgd_step(rows["x_adv"], ascent, rows["x"], self.eps, self.alpha,
                                     self.norm, self.clip, backend=self.backend)
