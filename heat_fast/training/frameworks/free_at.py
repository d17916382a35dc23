"""FreeAT (Shafahi et al. 2019): each minibatch is replayed m times; one backward per replay
gives both the weight gradient (an optimizer step) and the input gradient (an FGSM step on
the perturbation δ, kept in [−ε, ε]). δ persists across minibatches.

The shared loss is the training loss (with HE: CE(s·(cos − m·1_y)), margin included), and
the model stays in train mode (the same forward trains and crafts).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from heat_fast.training.crafting import project
from heat_fast.training.frameworks.base import Framework, StepStats, correct_count
from heat_fast.training.objective import Objective


class FreeAT(Framework):
    name = "free-at"

    def __init__(self, objective: Objective, eps: float = 4 / 255, alpha: Optional[float] = None,
                 steps: int = 4, **options):
        if int(steps) < 1:
            raise ValueError(f"free-at needs at least one replay, got {steps}")
        if objective.craft_scale not in (None, objective.scale):
            raise ValueError("free-at crafts with its training loss (one backward for both), so "
                             f"craft_scale={objective.craft_scale} cannot apply; leave it None")
        options["start"] = "none"
        super().__init__(objective, eps, eps if alpha is None else alpha, steps, **options)
        self.delta: Optional[Tensor] = None

    @property
    def replays(self) -> int:
        return self.steps

    def _carried_delta(self, x: Tensor) -> Tensor:
        fits = (self.delta is not None and self.delta.shape[1:] == x.shape[1:]
                and self.delta.shape[0] >= x.shape[0] and self.delta.device == x.device)
        if not fits:
            self.delta = torch.zeros_like(x)
        return self.delta[: x.shape[0]].to(x.dtype, copy=True)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
                   y: Tensor, measure_clean: bool = False) -> StepStats:
        """Replay (x, y) ``replays`` times, each with one optimizer step and one δ step; with
        ``measure_clean`` one no-grad clean forward afterwards for the clean accuracy."""
        x = x.detach()
        delta = self._carried_delta(x)
        losses, adv_correct = [], []
        for _ in range(self.replays):
            delta.requires_grad_(True)
            adv = self.objective.forward(model, (x + delta).clamp(0.0, 1.0))
            loss = self.objective.cross_entropy(adv, y, margin=True)
            adv_correct.append(correct_count(adv, y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            delta = project(x + delta.detach(), delta.grad, x, self.eps, self.alpha,
                            norm=self.norm, clip=None, backend=self.objective.backend) - x
            losses.append(loss.detach())
        self.delta[: x.shape[0]] = delta
        clean_correct, clean_count = self.clean_accuracy(model, x, y, measure=measure_clean)
        return StepStats(torch.stack(losses).mean(), clean_correct,
                         torch.stack(adv_correct).float().mean(), int(y.shape[0]), clean_count)

    def state_dict(self) -> dict:
        return {"delta": self.delta}

    def load_state_dict(self, state: dict) -> None:
        self.delta = state.get("delta")
