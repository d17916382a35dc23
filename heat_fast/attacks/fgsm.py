"""FGSM (Goodfellow et al. 2015): one step of size ε along the gradient sign, from x."""
from __future__ import annotations

from typing import Optional, Sequence

from heat_fast.attacks.iterative import IterativeAttack


class FGSM(IterativeAttack):
    """A single step x + ε·sign(∇loss) (L∞; L2 uses the normalized gradient), no random start."""

    def __init__(self, eps: float, loss: str = "ce", norm: str = "linf",
                 clip: Optional[Sequence[float]] = (0.0, 1.0), backend: str = "auto"):
        super().__init__(eps, steps=1, alpha=eps, loss=loss, norm=norm, random_start=False,
                         clip=clip, backend=backend)
