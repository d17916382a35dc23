"""The official AutoAttack (Croce & Hein 2020), standard version, when installed.

Two packagings exist and both work: ``pyautoattack`` (PyPI; keyword-only API,
``run_standard_evaluation(x, y, batch_size=...)`` returning ``(x_adv, y_adv)``) and the git
package ``autoattack`` (``AutoAttack(..., verbose=...)``, ``run_standard_evaluation(x, y,
bs=...)`` returning x_adv). The package is called exactly once per batch, on the whole
batch, with the tensors' own device (index included). Around the call, :class:`AutoAttack`
keeps the caller's state as it was: every module's mode (:class:`Attack` puts the model in
eval mode, which AutoAttack itself does not), the parameters' ``.grad`` (FAB calls
``backward``; parameters are frozen for the call, which gives the same input gradients),
and the global random state of torch and of every initialized CUDA device (the package
reseeds them).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
from types import ModuleType
from typing import Iterator, List

import torch
from torch import Tensor, nn

from heat_fast._checks import check_norm
from heat_fast.attacks.core import Attack, check_eps, frozen_parameters

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


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore torch's CPU random state and that of every initialized CUDA device on exit."""
    cpu = torch.get_rng_state()
    cuda: List[Tensor] = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def _accepts(function, name: str) -> bool:
    return name in inspect.signature(function).parameters


class AutoAttack(Attack):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at radius ``eps``."""

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0):
        self.package = load_package()
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.seed = int(seed)

    def _adversary(self, model: nn.Module, device: torch.device):
        cls = self.package.AutoAttack
        options = dict(norm=NORM_NAMES[self.norm], eps=self.eps, version="standard",
                       seed=self.seed, device=device)
        if _accepts(cls.__init__, "verbose"):
            options["verbose"] = False
        return cls(model, **options)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with preserved_rng(), frozen_parameters(model):
            adversary = self._adversary(model, x.device)
            run = adversary.run_standard_evaluation
            size = {"batch_size" if _accepts(run, "batch_size") else "bs": x.shape[0]}
            output = run(x, y, **size)
        x_adv = output[0] if isinstance(output, tuple) else output
        return x_adv.detach()
