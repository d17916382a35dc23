"""Learning-rate schedules stepped once per training batch.

``multistep``: lr × gamma^k after k milestones (0-based epoch indices: the decay applies
from that epoch on). ``cyclic``: FastAT's triangle, 0 → lr at half the run → 0, linear per
batch. ``cosine``: lr · ½(1 + cos(π·t)) with t going from 0 to 1 over the run after the
warmup. ``constant``: lr throughout. A warmup of ``warmup_iters`` batches (any schedule)
multiplies the factor by (it + 1) / warmup_iters while it < warmup_iters, so the first batch
already trains (lr/warmup_iters) and batch ``warmup_iters`` reaches the schedule's value.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("multistep", "cyclic", "cosine", "constant")


def lr_factor(kind: str, epochs: int, iters_per_epoch: int, milestones: Sequence[int] = (),
              gamma: float = 0.1, warmup_iters: int = 0) -> Callable[[int], float]:
    """The multiplier of the base lr at batch ``it`` (counted from 0 over the whole run)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; valid names: {', '.join(SCHEDULES)}")
    if epochs < 1 or iters_per_epoch < 1:
        raise ValueError(f"epochs and iters_per_epoch must be >= 1, got {epochs}, {iters_per_epoch}")
    total = epochs * iters_per_epoch
    if not 0 <= warmup_iters <= total:
        raise ValueError(f"warmup_iters must lie in [0, {total}] (the run's batches), got {warmup_iters}")
    marks = sorted(int(m) for m in milestones)
    half = total / 2

    def schedule(it: int) -> float:
        if kind == "multistep":
            return gamma ** bisect.bisect_right(marks, it // iters_per_epoch)
        if kind == "cyclic":
            return max(0.0, 1.0 - abs(it - half) / half)
        if kind == "cosine":
            t = min(1.0, max(0, it - warmup_iters) / max(1, total - warmup_iters))
            return 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    def factor(it: int) -> float:
        warm = (it + 1) / warmup_iters if it < warmup_iters else 1.0
        return warm * schedule(it)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int,
                    iters_per_epoch: int, milestones: Sequence[int] = (),
                    gamma: float = 0.1, warmup_iters: int = 0) -> LambdaLR:
    """A per-batch LambdaLR for :func:`lr_factor` (its state is just the batch count)."""
    return LambdaLR(optimizer, lr_factor(kind, epochs, iters_per_epoch, milestones, gamma,
                                         warmup_iters))
