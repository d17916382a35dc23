"""PGD-AT (Madry et al. 2018), with or without HE.

Crafting maximizes CE on the logits (HE: on s·cos, no margin); the update minimizes CE on
the adversarial batch (HE: CE(s·(cos − m·1_y))).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from heat_fast.reference import WeightNorm
from heat_fast.training.frameworks.base import Framework, LossResult, drop_in_framework


class PGDAT(Framework):
    name = "pgd-at"

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossResult:
        x_adv = self.attack(model, x, y)
        adv = self.objective.forward(model, x_adv)
        return LossResult(self.objective.cross_entropy(adv, y, margin=True), adv)


def pgd_at_loss(model: nn.Module, x_natural: Tensor, y: Tensor,
                optimizer: Optional[torch.optim.Optimizer] = None, step_size: float = 2 / 255,
                epsilon: float = 8 / 255, perturb_steps: int = 10, random_start: str = "uniform",
                he: bool = False, scale: float = 15.0, margin: float = 0.2,
                backend: str = "auto", generator: Optional[torch.Generator] = None, *,
                distance: str = "l_inf", eval_mode: bool = True,
                craft_scale: Optional[float] = None,
                weight_norm: Optional[WeightNorm] = None) -> Tensor:
    """Drop-in PGD-AT loss: craft PGD, zero ``optimizer``'s grads, return the outer loss.

    The model's module modes are restored after crafting; call ``loss.backward()`` and
    ``optimizer.step()`` yourself, as with the official TRADES ``trades_loss``. The
    keyword-only options: :func:`drop_in_framework`.
    """
    return drop_in_framework(PGDAT, model, x_natural, y, optimizer, step_size, epsilon,
                             perturb_steps, random_start, he, scale, margin, backend, generator,
                             distance, eval_mode, craft_scale, weight_norm)
