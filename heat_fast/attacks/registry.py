"""Attacks by name, as the evaluation and the command line spell them.

Grammar: ``fgsm``, ``pgd<k>``, ``mim<k>``, ``apgd[<k>]``, ``fab[<k>]``, ``square[<q>]``
followed by optional ``-`` parts: a loss (``ce``, ``cw``, ``dlr``), a norm (``linf`` default,
``l2``), ``r<n>`` restarts and ``t[<n>]`` targeted toward the n (default 9) classes ranked
after the prediction. Examples: ``pgd20-ce``, ``pgd20-cw``, ``pgd50-dlr-r5``,
``pgd20-ce-l2``, ``mim10``, ``apgd-ce``, ``apgd-dlr`` (100 steps), ``apgd-t`` (APGD-T:
targeted DLR, 100 steps, 9 targets), ``apgd20-t3``, ``fab-t`` (FAB-T: 100 steps, 9 targets),
``square`` (5000 queries), ``square1000-l2``, and ``autoattack`` / ``autoattack-l2`` (the
official package, standard version).
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional, Sequence

from heat_fast.attacks.apgd import APGD, APGDT
from heat_fast.attacks.autoattack import AutoAttack
from heat_fast.attacks.core import Attack
from heat_fast.attacks.fab import FAB
from heat_fast.attacks.fgsm import FGSM
from heat_fast.attacks.losses import LOSSES
from heat_fast.attacks.mim import MIM
from heat_fast.attacks.pgd import PGD
from heat_fast.attacks.square import Square

DEFAULT_STEPS = {"pgd": 20, "mim": 10, "apgd": 100, "fab": 100, "square": 5000}
DEFAULT_TARGETS = 9
_NAME = re.compile(r"^(fgsm|pgd|mim|apgd|fab|square)(\d*)((?:-[a-z0-9]+)*)$")
EXAMPLES = ("fgsm, pgd20-ce, pgd20-cw, pgd50-dlr-r5, pgd20-ce-l2, mim10, apgd-ce, apgd-dlr, "
            "apgd-t, fab-t, square, autoattack")


def _unknown(name: str, why: str) -> ValueError:
    return ValueError(f"unknown attack {name!r} ({why}); expected names like {EXAMPLES}")


class AttackSpec(NamedTuple):
    """A parsed attack name (``targets`` 0: untargeted; ``loss`` "" where it has none)."""

    family: str
    steps: int
    loss: str
    norm: str
    restarts: int
    targets: int = 0


def _check_family_parts(name: str, family: str, has_steps: bool, loss: Optional[str],
                        restarts: int, targets: int) -> None:
    if family == "fgsm" and (has_steps or restarts != 1 or targets):
        raise _unknown(name, "fgsm takes neither steps, restarts nor targets")
    if family in ("pgd", "mim") and targets:
        raise _unknown(name, f"{family} is untargeted here; use apgd-t or fab-t")
    if family == "fab" and not targets:
        raise _unknown(name, "only the targeted FAB is implemented: fab-t")
    if family == "square" and targets:
        raise _unknown(name, "square is untargeted")
    if loss is not None and (family in ("fab", "square") or targets):
        raise _unknown(name, f"{family}{'-t' if targets else ''} takes no loss")


def parse_name(name: str) -> AttackSpec:
    """Parse an attack name (see the module docstring); ValueError if it is not one."""
    key = name.strip().lower()
    official = re.fullmatch(r"autoattack(?:-(linf|l2))?", key)
    if official:
        return AttackSpec("autoattack", 0, "", official.group(1) or "linf", 1)
    match = _NAME.match(key)
    if match is None:
        raise _unknown(name, "not of the form family[steps][-loss][-norm][-rN][-tN]")
    family, steps_text, suffix = match.groups()
    loss, norm, restarts, targets = None, "linf", 1, 0
    for part in filter(None, suffix.split("-")):
        if part in LOSSES:
            loss = part
        elif part in ("linf", "l2"):
            norm = part
        elif re.fullmatch(r"r[1-9]\d*", part):
            restarts = int(part[1:])
        elif re.fullmatch(r"t([1-9]\d*)?", part):
            targets = int(part[1:]) if len(part) > 1 else DEFAULT_TARGETS
        else:
            raise _unknown(name, f"unknown part {part!r}")
    _check_family_parts(name, family, bool(steps_text), loss, restarts, targets)
    steps = int(steps_text) if steps_text else DEFAULT_STEPS.get(family, 1)
    if steps < 1:
        raise _unknown(name, "the step or query count must be >= 1")
    default_loss = "" if family in ("fab", "square") or targets else "ce"
    return AttackSpec(family, steps, loss or default_loss, norm, restarts, targets)


def build_attack(name: str, eps: float, seed: int = 0, backend: str = "auto",
                 clip: Optional[Sequence[float]] = (0.0, 1.0)) -> Attack:
    """The attack called ``name`` (see the module docstring) at radius ``eps``."""
    spec = parse_name(name)
    if spec.family == "autoattack":
        return AutoAttack(eps, norm=spec.norm, seed=seed)
    if spec.family == "fgsm":
        return FGSM(eps, loss=spec.loss, norm=spec.norm, clip=clip, backend=backend)
    common = dict(norm=spec.norm, restarts=spec.restarts, clip=clip, seed=seed, backend=backend)
    if spec.family == "square":
        return Square(eps, queries=spec.steps, **common)
    if spec.family == "fab":
        return FAB(eps, steps=spec.steps, targets=spec.targets, **common)
    if spec.family == "apgd" and spec.targets:
        return APGDT(eps, steps=spec.steps, targets=spec.targets, **common)
    common.update(steps=spec.steps, loss=spec.loss)
    if spec.family == "pgd":
        return PGD(eps, **common)
    if spec.family == "mim":
        return MIM(eps, random_start=spec.restarts > 1, **common)
    return APGD(eps, **common)
