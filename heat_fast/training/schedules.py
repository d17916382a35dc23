"""Learning-rate schedules stepped once per training batch.

``multistep``: lr × gamma^k after k milestones (0-based epoch indices: the decay applies
from that epoch on). ``cyclic``: FastAT's triangle, 0 → lr at half the run → 0, linear per
batch. ``constant``: lr throughout.
"""
from __future__ import annotations

import bisect
from typing import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("multistep", "cyclic", "constant")


def lr_factor(kind: str, epochs: int, iters_per_epoch: int, milestones: Sequence[int] = (),
              gamma: float = 0.1) -> Callable[[int], float]:
    """The multiplier of the base lr at batch ``it`` (counted from 0 over the whole run)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; valid names: {', '.join(SCHEDULES)}")
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"epochs and iters_per_epoch must be >= 1, got {epochs}, {iters_per_epoch}")
    marks = sorted(int(m) for m in milestones)
    half = epochs * iters_per_epoch / 2

    def factor(it: int) -> float:
        if kind == "multistep":
            return gamma ** bisect.bisect_right(marks, it // iters_per_epoch)
        if kind == "cyclic":
            return max(0.0, 1.0 - abs(it - half) / half)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int,
                    iters_per_epoch: int, milestones: Sequence[int] = (),
                    gamma: float = 0.1) -> LambdaLR:
    """A per-batch LambdaLR for :func:`lr_factor` (its state is just the batch count)."""
    return LambdaLR(optimizer, lr_factor(kind, epochs, iters_per_epoch, milestones, gamma))
