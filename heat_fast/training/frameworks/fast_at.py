"""FastAT (Wong, Rice & Kolter 2020): FGSM from a uniform random start, α = 1.25·ε.

The losses are PGD-AT's (with HE: craft on s·cos without margin, train with the margin);
the cyclic learning rate comes from the schedule (see heat_fast.training.schedules).
"""
from __future__ import annotations

from typing import Optional

from heat_fast.training.frameworks.pgd_at import PGDAT
from heat_fast.training.objective import Objective

ALPHA_RATIO = 1.25


class FastAT(PGDAT):
    """One FGSM step of size ``alpha`` (default 1.25·ε) from a uniform start."""

    name = "fast-at"

    def __init__(self, objective: Objective, eps: float = 8 / 255, alpha: Optional[float] = None,
                 steps: int = 1, **options):
        if steps != 1:
            raise ValueError(f"fast-at takes exactly one FGSM step, got steps={steps}")
        options["start"] = "uniform"
        super().__init__(objective, eps, ALPHA_RATIO * eps if alpha is None else alpha, 1,
                         **options)
