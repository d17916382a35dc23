"""What every training framework shares: attack settings, the update step, statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from heat_fast.training.crafting import STARTS, crafting_mode, pgd_attack
from heat_fast.training.distributed import unwrap
from heat_fast.training.objective import Objective, Outputs


@dataclass
class StepStats:
    """One training step: mean ``loss`` and correct counts out of ``count`` examples
    (tensors, so no host synchronisation is forced)."""

    loss: Tensor
    clean_correct: Tensor
    adv_correct: Tensor
    count: int


@dataclass
class LossResult:
    """A framework's outer loss plus the forward passes it made (for accuracy)."""

    loss: Tensor
    adv: Outputs
    clean: Optional[Outputs] = None


def correct_count(out: Outputs, y: Tensor) -> Tensor:
    """How many rows of ``out`` predict ``y`` (argmax of the logits), without gradients."""
    with torch.no_grad():
        return (out.logits.argmax(1) == y).sum()


class Framework:
    """Base class: one attack (``eps``, ``alpha``, ``steps``, ``start``) and one update.

    Subclasses implement :meth:`loss` (craft, then return the outer loss); FreeAT overrides
    :meth:`train_step`. ``alpha`` defaults to ε/4. ``eval_mode`` puts the model in eval mode while crafting (BN on
    running statistics); ``generator`` drives the random starts.
    """

    name = "base"

    def __init__(self, objective: Objective, eps: float = 8 / 255, alpha: Optional[float] = None,
                 steps: int = 10, start: str = "uniform", eval_mode: bool = True,
                 generator: Optional[torch.Generator] = None, norm: str = "linf"):
        alpha = eps / 4 if alpha is None else alpha
        if not float(eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not float(alpha) >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        self.objective = objective
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.start, self.eval_mode, self.generator, self.norm = start, eval_mode, generator, norm

    def attack(self, model: nn.Module, x: Tensor,
               loss_fn: Callable[[nn.Module, Tensor], Tensor]) -> Tensor:
        """Run this framework's PGD on ``loss_fn(net, x_adv)`` (see :func:`pgd_attack`), with
        ``net`` the plain model inside a DDP wrapper: crafting never goes through DDP."""
        net = unwrap(model)
        return pgd_attack(net, x, lambda xa: loss_fn(net, xa), self.eps, self.alpha, self.steps,
                          self.start, self.generator, self.norm, self.eval_mode,
                          self.objective.backend)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> LossResult:
        raise NotImplementedError

    def drop_in_loss(self, model: nn.Module, x: Tensor, y: Tensor,
                     optimizer: Optional[torch.optim.Optimizer] = None) -> Tensor:
        """The outer loss after crafting, with ``optimizer``'s grads zeroed (as the official
        TRADES ``trades_loss`` does); the caller runs backward and the step."""
        loss = self.loss(model, x, y).loss
        if optimizer is not None:
            optimizer.zero_grad()
        return loss

    def clean_outputs(self, model: nn.Module, x: Tensor) -> Outputs:
        """A gradient-free clean forward in crafting mode on the plain (unwrapped) model."""
        net = unwrap(model)
        with torch.no_grad(), crafting_mode(net, self.eval_mode):
            return self.objective.forward(net, x)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
                   y: Tensor) -> StepStats:
        """Craft, compute the outer loss, and take one optimizer step."""
        result = self.loss(model, x, y)
        adv_correct = correct_count(result.adv, y)  # before the step changes the head weight
        clean_correct = None if result.clean is None else correct_count(result.clean, y)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        if clean_correct is None:
            clean_correct = correct_count(self.clean_outputs(model, x), y)
        return StepStats(result.loss.detach(), clean_correct, adv_correct, int(y.shape[0]))

    def state_dict(self) -> dict:
        """State carried between steps (none by default); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")
