"""The official AutoAttack (Croce & Hein 2020), standard version, when installed.

It is imported from the ``autoattack`` package (git install) or ``pyautoattack`` (PyPI).
AutoAttack does not put the model in eval mode; :class:`Attack` does that for it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from torch import Tensor, nn

from heat_fast.attacks.core import Attack, check_eps
from heat_fast._checks import check_norm

PACKAGES = ("autoattack", "pyautoattack")
NORM_NAMES = {"linf": "Linf", "l2": "L2"}


class AutoAttackUnavailableError(ImportError):
    """Neither AutoAttack package can be imported."""


def load_package() -> ModuleType:
    """The first importable AutoAttack package, else AutoAttackUnavailableError."""
    for name in PACKAGES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise AutoAttackUnavailableError(
        "the official AutoAttack is not installed: neither the 'autoattack' package "
        "(pip install git+https://github.com/fra31/auto-attack) nor 'pyautoattack' "
        "(pip install pyautoattack) can be imported"
    )


class AutoAttack(Attack):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at radius ``eps``."""

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0):
        self.package = load_package()
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.seed = int(seed)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        adversary = self.package.AutoAttack(
            model, norm=NORM_NAMES[self.norm], eps=self.eps, version="standard",
            seed=self.seed, verbose=False, device=x.device.type,
        )
        return adversary.run_standard_evaluation(x, y, bs=x.shape[0]).detach()
