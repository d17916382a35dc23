"""MIM (Dong et al. 2018): PGD whose direction is a momentum of L1-normalized gradients,
g_t = μ·g_{t−1} + ∇ / mean|∇| per example."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from heat_fast.attacks.iterative import IterativeAttack

L1_EPS = 1e-12


class MIM(IterativeAttack):
    """Momentum iterative attack with decay ``momentum`` (μ = 1 in the paper)."""

    def __init__(self, eps: float, steps: int = 10, alpha: Optional[float] = None,
                 loss: str = "ce", momentum: float = 1.0, norm: str = "linf", restarts: int = 1,
                 random_start: bool = False, clip: Optional[Sequence[float]] = (0.0, 1.0),
                 seed: int = 0, backend: str = "auto"):
        super().__init__(eps, steps, alpha, loss, norm, restarts, random_start, clip, seed,
                         backend)
        if not momentum >= 0:
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        self.momentum = float(momentum)

    def init_state(self, x_adv: Tensor) -> Dict[str, Tensor]:
        return {"momentum": torch.zeros_like(x_adv)}

    def direction(self, grad: Tensor, state: Dict[str, Tensor]) -> Tensor:
        scale = grad.abs().flatten(1).mean(dim=1).clamp_min(L1_EPS)
        state["momentum"] = self.momentum * state["momentum"] + grad / scale.view(
            (-1,) + (1,) * (grad.dim() - 1))
        return state["momentum"]
