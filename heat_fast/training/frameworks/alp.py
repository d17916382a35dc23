"""Adversarial logit pairing (Kannan et al. 2018), with or without HE.

Crafting as PGD-AT. Loss ½·CE(clean) + ½·CE(adv) + λ·MSE(logits(x), logits(x_adv)); with HE
both CE terms carry the margin and the MSE compares unscaled cosines (mean over elements).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast.reference import WeightNorm
from heat_fast.training.frameworks.base import Framework, LossResult, drop_in_framework
from heat_fast.training.objective import Objective


class ALP(Framework):
    name = "alp"

    def __init__(self, objective: Objective, eps: float = 8 / 255, alpha: Optional[float] = None,
                 steps: int = 10, alp_weight: float = 0.5, **options):
        super().__init__(objective, eps, alpha, steps, **options)
        if not float(alp_weight) >= 0:
            raise ValueError(f"alp_weight must be >= 0, got {alp_weight}")
        self.alp_weight = float(alp_weight)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossResult:
        x_adv = self.attack(model, x, y)
        clean = self.objective.forward(model, x)
        adv = self.objective.forward(model, x_adv)
        ce = self.objective.cross_entropy
        pairing = F.mse_loss(clean.logits.float(), adv.logits.float())
        loss = 0.5 * ce(clean, y, margin=True) + 0.5 * ce(adv, y, margin=True) + self.alp_weight * pairing
        return LossResult(loss, adv, clean)


def alp_loss(model: nn.Module, x_natural: Tensor, y: Tensor,
             optimizer: Optional[torch.optim.Optimizer] = None, step_size: float = 2 / 255,
             epsilon: float = 8 / 255, perturb_steps: int = 10, alp_weight: float = 0.5,
             random_start: str = "uniform", he: bool = False, scale: float = 20.0,
             margin: float = 0.3, backend: str = "auto",
             generator: Optional[torch.Generator] = None, *, distance: str = "l_inf",
             eval_mode: bool = True, craft_scale: Optional[float] = None,
             weight_norm: Optional[WeightNorm] = None) -> Tensor:
    """Drop-in ALP loss: craft PGD, zero ``optimizer``'s grads, return the outer loss.
    The keyword-only options: :func:`~heat_fast.training.frameworks.base.drop_in_framework`."""
    return drop_in_framework(ALP, model, x_natural, y, optimizer, step_size, epsilon,
                             perturb_steps, random_start, he, scale, margin, backend, generator,
                             distance, eval_mode, craft_scale, weight_norm,
                             alp_weight=alp_weight)
