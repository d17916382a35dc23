"""Adversarial training frameworks (SPEC §3), each with HE on or off.

:func:`build_framework` builds one of :data:`FRAMEWORKS` from an
:class:`~heat_fast.training.objective.Objective` and attack settings.
"""
from __future__ import annotations

from typing import Dict, Type

from heat_fast.training.frameworks.alp import ALP, alp_loss
from heat_fast.training.frameworks.base import Framework, LossResult, StepStats
from heat_fast.training.frameworks.fast_at import FastAT
from heat_fast.training.frameworks.free_at import FreeAT
from heat_fast.training.frameworks.pgd_at import PGDAT, pgd_at_loss
from heat_fast.training.frameworks.trades import TRADES, trades_loss
from heat_fast.training.objective import Objective

_CLASSES: Dict[str, Type[Framework]] = {
    cls.name: cls for cls in (PGDAT, ALP, TRADES, FreeAT, FastAT)
}
FRAMEWORKS = tuple(_CLASSES)


def build_framework(name: str, objective: Objective, **settings) -> Framework:
    """Framework ``name`` with ``settings`` (eps, alpha, steps, start, eval_mode, generator,
    and framework-specific beta / alp_weight). Unknown names raise ValueError."""
    if name not in _CLASSES:
        raise ValueError(f"unknown framework {name!r}; valid names: {', '.join(FRAMEWORKS)}")
    return _CLASSES[name](objective, **settings)


__all__ = ["ALP", "FRAMEWORKS", "FastAT", "Framework", "FreeAT", "LossResult", "PGDAT",
           "StepStats", "TRADES", "alp_loss", "build_framework", "pgd_at_loss", "trades_loss"]
