"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein 2020), L∞ or L2.

FAB looks for the adversarial input closest to x. Per step, at the iterate x_k it
linearizes the decision boundary between the label y and the target t,
f(z) ≈ f(x_k) + ⟨∇f(x_k), z − x_k⟩ with f = z_t − z_y, and projects both x_k and x onto
that hyperplane inside the box (:func:`heat_fast.attacks.hyperplane.min_norm_step`),
giving steps d_k and d_0. It moves to
x_{k+1} = clip((x_k + η·d_k)(1 − α) + (x + η·d_0)·α) with α = min(‖d_k‖ / (‖d_k‖ + ‖d_0‖),
α_max), biased toward x. Once x_{k+1} is misclassified it steps back toward x,
x_{k+1} ← x + β·(x_{k+1} − x), to look for a closer adversarial input.

For evaluation at radius ε an example is broken as soon as one visited misclassified point
lies within ε of x; that point is returned and the example stops (FAB's later steps would
only shorten it). Targets are the classes ranked 2 .. targets + 1 by the clean logits, each
run on the examples still robust. Examples never broken are returned unchanged.
AutoAttack's standard version: 100 steps, 9 targets, 1 restart, α_max 0.1, η 1.05, β 0.9;
restart r > 0 of a target starts from a random point of the ε/2-ball
(:func:`heat_fast.random_init`).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from heat_fast.attacks.core import SearchAttack, check_count, keep_rows, loss_and_grad, target_runs
from heat_fast.attacks.hyperplane import min_norm_step
from heat_fast.ops import random_init

MIN_STEP = 1e-8


def target_margin(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """z_t − z_y per example: positive once the target class beats the label."""
    logits = logits.float()
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def norm_of(delta: Tensor, norm: str) -> Tensor:
    """‖delta‖ per row of a (B, ...) tensor, L∞ or L2, in float32."""
    flat = delta.flatten(1).float()
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


class FAB(SearchAttack):
    """Targeted FAB at radius ``eps`` (see the module docstring for the parameters)."""

    def __init__(self, eps: float, steps: int = 100, targets: int = 9, norm: str = "linf",
                 restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, clip: Sequence[float] = (0.0, 1.0), seed: int = 0,
                 backend: str = "auto"):
        super().__init__(eps, norm, restarts, clip, seed, backend)
        self.steps = check_count("steps", steps)
        self.targets = check_count("targets", targets)
        for name, value, low, high in (("alpha_max", alpha_max, 0.0, 1.0),
                                       ("eta", eta, 1.0, float("inf")),
                                       ("beta", beta, 0.0, 1.0)):
            if not low <= value <= high:
                raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)

    def run_targets(self, clean_logits: Tensor) -> List[Optional[Tensor]]:
        return target_runs(clean_logits, self.targets, self.restarts)

    def _search(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor],
                restart: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        start = x if restart == 0 else random_init(x, self.eps / 2, self.norm, self.clip,
                                                   generator, self.backend)
        found = torch.zeros_like(y, dtype=torch.bool)
        points = x.clone()
        rows = {"i": torch.arange(y.shape[0], device=y.device), "x0": x, "y": y, "t": target,
                "x": start}
        rows, stepped_back = self._settle(model, rows, found, points, need_grad=True)
        for step in range(self.steps):
            if rows["i"].numel() == 0:
                break
            rows["x"] = self._step(rows)
            need_grad = step + 1 < self.steps
            settle = self._settle_predicting if need_grad and stepped_back > 0.5 else self._settle
            rows, stepped_back = settle(model, rows, found, points, need_grad=need_grad)
        return found, points

    def _linearize(self, model: nn.Module, rows: Dict[str, Tensor], need_grad: bool
                   ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Logits at the iterates and the rows with ``f`` and (if ``need_grad``) ``grad``,
        the linearization of z_t − z_y there."""
        loss = functools.partial(target_margin, target=rows["t"])
        logits, f, grad = loss_and_grad(model, loss, rows["x"], rows["y"], need_grad=need_grad)
        return logits, {**rows, "f": f, **({"grad": grad} if need_grad else {})}

    def _record(self, rows: Dict[str, Tensor], logits: Tensor, found: Tensor,
                points: Tensor) -> Tuple[Dict[str, Tensor], Tensor]:
        """Record the rows misclassified within ε of x; return the other rows and which
        of them are misclassified (outside the ε-ball)."""
        misclassified = logits.argmax(dim=1) != rows["y"]
        broken = misclassified & (norm_of(rows["x"] - rows["x0"], self.norm) <= self.eps)
        found[rows["i"][broken]] = True
        points[rows["i"][broken]] = rows["x"][broken]
        return keep_rows(~broken, rows), misclassified[~broken]

    def _back(self, rows: Dict[str, Tensor]) -> Tensor:
        return rows["x0"] + self.beta * (rows["x"] - rows["x0"])

    def _settle(self, model: nn.Module, rows: Dict[str, Tensor], found: Tensor,
                points: Tensor, need_grad: bool) -> Tuple[Dict[str, Tensor], float]:
        """Linearize at the iterates and record the rows broken; the other misclassified
        rows step back toward x and are linearized there. Returns the rows left and the
        fraction that stepped back."""
        logits, rows = self._linearize(model, rows, need_grad)
        rows, outside = self._record(rows, logits, found, points)
        if not bool(outside.any()):
            return rows, 0.0
        back = keep_rows(outside, rows)
        back["x"] = self._back(back)
        logits, back = self._linearize(model, back, need_grad)
        back, _ = self._record(back, logits, found, points)
        kept = keep_rows(~outside, rows)
        return ({name: torch.cat([kept[name], back[name]]) for name in kept},
                float(outside.float().mean()))

    def _settle_predicting(self, model: nn.Module, rows: Dict[str, Tensor], found: Tensor,
                           points: Tensor, need_grad: bool = True
                           ) -> Tuple[Dict[str, Tensor], float]:
        """:meth:`_settle` in the other order, cheaper when most rows step back: classify
        the iterates (forward only), step the misclassified back, then linearize every row
        once. The same points and linearizations."""
        with torch.no_grad():
            logits = model(rows["x"])
        rows, outside = self._record(rows, logits, found, points)
        rows["x"] = torch.where(outside.view((-1,) + (1,) * (rows["x"].dim() - 1)),
                                self._back(rows), rows["x"])
        logits, rows = self._linearize(model, rows, need_grad)
        rows, _ = self._record(rows, logits, found, points)
        return rows, (float(outside.float().mean()) if outside.numel() else 0.0)

    def _step(self, rows: Dict[str, Tensor]) -> Tensor:
        x1, x0, grad = rows["x"], rows["x0"], rows["grad"]
        n = x1.shape[0]
        w = grad.flatten(1).float()
        x1_flat, x0_flat = x1.flatten(1).float(), x0.flatten(1).float()
        change_x1 = -rows["f"]
        change_x0 = -rows["f"] - (w * (x0_flat - x1_flat)).sum(dim=1)
        steps = min_norm_step(torch.cat([x1_flat, x0_flat]), torch.cat([w, w]),
                              torch.cat([change_x1, change_x0]), self.norm, *self.clip)
        size = norm_of(steps, self.norm).clamp_min(MIN_STEP)
        alpha = (size[:n] / (size[:n] + size[n:])).clamp(0.0, self.alpha_max)[:, None]
        moved = ((x1_flat + self.eta * steps[:n]) * (1 - alpha)
                 + (x0_flat + self.eta * steps[n:]) * alpha)
        return moved.clamp(*self.clip).view_as(x1).to(x1.dtype)
