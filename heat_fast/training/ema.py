"""An exponential moving average (EMA) of a model's weights, updated after each optimizer step."""
from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP = 10


class WeightEMA:
    """A copy of ``model`` (in eval mode, no gradients) whose parameters follow
    p_ema ← d·p_ema + (1 − d)·p after each :meth:`update`, with d = min(decay, (1 + t) / (10 + t))
    at update t (so early updates, far from the final weights, fade fast); buffers (BatchNorm
    statistics) are copied from the model."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.decay, self.updates = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (WARMUP + self.updates))
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current.detach().to(average.dtype), 1.0 - decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
