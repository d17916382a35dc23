"""TRADES (Zhang et al. 2019), with or without HE.

Crafting maximizes Σ KL(p(x) ‖ p(x′)) from x + 0.001·N(0, I); the loss is CE(clean) +
β·Σ KL(p(x) ‖ p(x_adv)) / B. With HE the KL compares softmax(s·cos) without margin and the
CE carries the margin.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast._step_args import canonical_norm
from heat_fast.reference import WeightNorm
from heat_fast.training.frameworks.base import Framework, LossResult, drop_in_framework
from heat_fast.training.objective import Objective


class TRADES(Framework):
    name = "trades"

    def __init__(self, objective: Objective, eps: float = 8 / 255, alpha: Optional[float] = None,
                 steps: int = 10, beta: float = 6.0, start: str = "normal", **options):
        super().__init__(objective, eps, alpha, steps, start=start, **options)
        if not float(beta) >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def _kl_sum(self, adv_logits: Tensor, clean_probs: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_probs, reduction="sum")

    def craft_loss(self, net: nn.Module, x_adv: Tensor, target: Tensor) -> Tensor:
        """Σ KL(p(x) ‖ p(x_adv)) with ``target`` = p(x), the clean probabilities."""
        obj = self.objective
        return self._kl_sum(obj.scaled_logits(obj.forward(net, x_adv), crafting=True), target)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossResult:
        obj = self.objective
        clean_probs = F.softmax(obj.scaled_logits(self.clean_outputs(model, x), crafting=True), dim=1)
        x_adv = self.attack(model, x, clean_probs)
        clean = obj.forward(model, x)
        adv = obj.forward(model, x_adv)
        robust = self._kl_sum(obj.scaled_logits(adv), F.softmax(obj.scaled_logits(clean), dim=1))
        loss = obj.cross_entropy(clean, y, margin=True) + self.beta * robust / x.shape[0]
        return LossResult(loss, adv, clean)


def trades_loss(model: nn.Module, x_natural: Tensor, y: Tensor,
                optimizer: Optional[torch.optim.Optimizer], step_size: float = 0.003,
                epsilon: float = 0.031, perturb_steps: int = 10, beta: float = 1.0,
                distance: str = "l_inf", he: bool = False, scale: float = 15.0,
                margin: float = 0.2, backend: str = "auto",
                generator: Optional[torch.Generator] = None, *, eval_mode: bool = True,
                craft_scale: Optional[float] = None,
                weight_norm: Optional[WeightNorm] = None) -> Tensor:
    """Drop-in for the official TRADES ``trades_loss`` (same signature and defaults).

    Crafts from x + 0.001·N(0, I) with the model's modes switched to eval and restored, calls
    ``optimizer.zero_grad()``, and returns the loss for the caller's backward. As in the
    official code, ``distance='l_2'`` takes normalized-gradient steps of 2·ε/steps
    (``step_size`` unused) projected onto the L2 ball. Where it differs from the official
    code: the loss makes two train-mode forwards (x, x_adv) where the official makes three
    (x, x_adv, x again; BN running statistics differ), and the L2 step projects onto the
    ball before clipping to [0, 1] (the official clips first); heat_fast.compat has the
    official algorithm. The keyword-only options:
    :func:`~heat_fast.training.frameworks.base.drop_in_framework`.
    """
    l2 = canonical_norm(distance, "distance") == "l2"
    alpha = 2 * epsilon / max(perturb_steps, 1) if l2 else step_size
    return drop_in_framework(TRADES, model, x_natural, y, optimizer, alpha, epsilon,
                             perturb_steps, "normal", he, scale, margin, backend, generator,
                             distance, eval_mode, craft_scale, weight_norm, beta=beta)
