"""Worst case over a list of attacks: each attack runs only on the examples that every
earlier attack failed to fool, and each example keeps the first input that fooled it."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from heat_fast.attacks.core import Attack, predict


class Ensemble(Attack):
    """``Ensemble([PGD(...), APGD(...)])(model, x, y)``: per example the first successful
    adversarial input in list order; an example no attack fools gets the last attack's
    output. Examples misclassified clean are returned unchanged."""

    def __init__(self, attacks: Sequence[Attack]):
        if not attacks or not all(isinstance(a, Attack) for a in attacks):
            raise ValueError("Ensemble needs a non-empty list of Attack instances")
        self.attacks = list(attacks)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_adv = x.clone()
        robust = predict(model, x) == y
        for attack in self.attacks:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            candidate = attack(model, x[idx], y[idx])
            x_adv[idx] = candidate
            robust[idx] = predict(model, candidate) == y[idx]
        return x_adv
