"""Attacks by name, as the evaluation and the command line spell them.

Grammar: ``fgsm``, ``pgd<k>``, ``mim<k>``, ``apgd[<k>]`` followed by optional ``-`` parts:
a loss (``ce``, ``cw``, ``dlr``), a norm (``linf`` default, ``l2``) and ``r<n>`` restarts.
Examples: ``pgd20-ce``, ``pgd20-cw``, ``pgd50-dlr-r5``, ``pgd20-ce-l2``, ``mim10``,
``apgd-ce``, ``apgd-dlr`` (100 steps), and ``autoattack`` (the official package).
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional, Sequence

from heat_fast.attacks.apgd import APGD
from heat_fast.attacks.autoattack import AutoAttack
from heat_fast.attacks.core import Attack
from heat_fast.attacks.fgsm import FGSM
from heat_fast.attacks.losses import LOSSES
from heat_fast.attacks.mim import MIM
from heat_fast.attacks.pgd import PGD

DEFAULT_STEPS = {"pgd": 20, "mim": 10, "apgd": 100}
_NAME = re.compile(r"^(fgsm|pgd|mim|apgd)(\d*)((?:-[a-z0-9]+)*)$")
EXAMPLES = "fgsm, pgd20-ce, pgd20-cw, pgd50-dlr-r5, pgd20-ce-l2, mim10, apgd-ce, apgd-dlr, autoattack"


def _unknown(name: str, why: str) -> ValueError:
    return ValueError(f"unknown attack {name!r} ({why}); expected names like {EXAMPLES}")


class AttackSpec(NamedTuple):
    """A parsed attack name."""

    family: str
    steps: int
    loss: str
    norm: str
    restarts: int


def parse_name(name: str) -> AttackSpec:
    """Parse an attack name (see the module docstring); ValueError if it is not one."""
    key = name.strip().lower()
    if key == "autoattack":
        return AttackSpec("autoattack", 0, "", "linf", 1)
    match = _NAME.match(key)
    if match is None:
        raise _unknown(name, "not of the form family[steps][-loss][-norm][-rN]")
    family, steps_text, suffix = match.groups()
    loss, norm, restarts = "ce", "linf", 1
    for part in filter(None, suffix.split("-")):
        if part in LOSSES:
            loss = part
        elif part in ("linf", "l2"):
            norm = part
        elif re.fullmatch(r"r\d+", part):
            restarts = int(part[1:])
        else:
            raise _unknown(name, f"unknown part {part!r}")
    if family == "fgsm" and (steps_text or restarts != 1):
        raise _unknown(name, "fgsm takes neither steps nor restarts")
    steps = int(steps_text) if steps_text else DEFAULT_STEPS.get(family, 1)
    return AttackSpec(family, steps, loss, norm, restarts)


def build_attack(name: str, eps: float, seed: int = 0, backend: str = "auto",
                 clip: Optional[Sequence[float]] = (0.0, 1.0)) -> Attack:
    """The attack called ``name`` (see the module docstring) at radius ``eps``."""
    spec = parse_name(name)
    if spec.family == "autoattack":
        return AutoAttack(eps, seed=seed)
    if spec.family == "fgsm":
        return FGSM(eps, loss=spec.loss, norm=spec.norm, clip=clip, backend=backend)
    common = dict(steps=spec.steps, loss=spec.loss, norm=spec.norm, restarts=spec.restarts,
                  clip=clip, seed=seed, backend=backend)
    if spec.family == "pgd":
        return PGD(eps, **common)
    if spec.family == "mim":
        return MIM(eps, random_start=spec.restarts > 1, **common)
    return APGD(eps, **common)
