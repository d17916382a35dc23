"""PGD (Madry et al. 2018): projected sign (L∞) or normalized (L2) gradient ascent on the
CE, CW-margin or DLR loss, with random start and restarts that keep each example's worst
case. See :class:`heat_fast.attacks.iterative.IterativeAttack` for the parameters."""
from __future__ import annotations

from heat_fast.attacks.iterative import IterativeAttack


class PGD(IterativeAttack):
    """PGD-k: ``PGD(eps, steps=20, loss="cw")``; α defaults to ε/4 (2/255 at ε = 8/255)."""
