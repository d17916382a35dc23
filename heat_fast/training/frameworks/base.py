"""What every training framework shares: attack settings, the update step, statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from heat_fast._step_args import canonical_norm
from heat_fast.training.compiled import CompiledAttack
from heat_fast.training.crafting import STARTS, attack_step, crafting_mode, pgd_attack, run_attack
from heat_fast.training.distributed import unwrap
from heat_fast.reference import WeightNorm
from heat_fast.training.objective import Objective, Outputs


@dataclass
class StepStats:
    """One training step: mean ``loss``, the adversarial batch's correct count out of
    ``count`` examples and the clean batch's out of ``clean_count`` (0 when the step
    measured no clean accuracy; None, the default, means all ``count`` were measured).
    Tensors, so no host synchronisation is forced."""

    loss: Tensor
    clean_correct: Tensor
    adv_correct: Tensor
    count: int
    clean_count: Optional[int] = None

    def __post_init__(self) -> None:
        if self.clean_count is None:
            self.clean_count = self.count


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

    Subclasses implement :meth:`loss` (craft, then return the outer loss) and, when they
    attack another loss than the objective's crafting CE, :meth:`craft_loss`; FreeAT
    overrides :meth:`train_step`. ``alpha`` defaults to ε/4. ``eval_mode`` puts the model in
    eval mode while crafting (BN on running statistics); False crafts in the model's own
    (train) mode, BN on batch statistics and each crafting forward updating the running ones.
    ``generator`` drives the random starts; ``norm`` 'linf' or 'l2' (also 'Linf', 'l_inf',
    'L2', 'l_2'). With ``objective.compile`` the attack runs as a :class:`CompiledAttack`.
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
        self.start, self.eval_mode, self.generator = start, eval_mode, generator
        self.norm = canonical_norm(norm)
        self._compiled: Optional[CompiledAttack] = None

    def craft_loss(self, net: nn.Module, x_adv: Tensor, target: Any) -> Tensor:
        """The loss the attack maximizes at ``x_adv``; ``target`` is what :meth:`loss` hands
        to :meth:`attack` (here the labels: CE on the logits, with HE on s·cos, no margin)."""
        return self.objective.craft_loss(net, x_adv, target)

    def _craft_step(self, net: nn.Module, x_adv: Tensor, x_nat: Tensor, target: Any) -> Tensor:
        return attack_step(lambda xa: self.craft_loss(net, xa, target), x_adv, x_nat, self.eps,
                           self.alpha, self.norm, self.objective.backend)

    def attack(self, model: nn.Module, x: Tensor, target: Any) -> Tensor:
        """This framework's PGD on :meth:`craft_loss` (see :func:`pgd_attack`), with ``net``
        the plain model inside a DDP wrapper: crafting never goes through DDP. With
        ``objective.compile`` the K steps run as a :class:`CompiledAttack`."""
        net = unwrap(model)
        backend, dtype = self.objective.backend, self.objective.compute_dtype
        if not self.objective.compile:
            return pgd_attack(net, x, lambda xa: self.craft_loss(net, xa, target), self.eps,
                              self.alpha, self.steps, self.start, self.generator, self.norm,
                              self.eval_mode, backend, dtype)
        if self._compiled is None:
            self._compiled = CompiledAttack(self._craft_step)
        compiled = self._compiled
        return run_attack(net, x, lambda x_adv, x_nat: compiled(net, x_adv, x_nat, target, self.steps),
                          self.eps, self.start, self.generator, self.norm, self.eval_mode, backend,
                          dtype)

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
        """A gradient-free clean forward in crafting mode on the plain (unwrapped) model; its
        logits are formed here, under no_grad, not lazily (TRADES' crafting target must not
        carry a graph: the compiled attack refuses one)."""
        net = unwrap(model)
        with torch.no_grad(), crafting_mode(net, self.eval_mode):
            return Outputs(logits=self.objective.forward(net, x).logits)

    def clean_accuracy(self, model: nn.Module, x: Tensor, y: Tensor,
                       clean: Optional[Outputs] = None, measure: bool = False
                       ) -> Tuple[Tensor, int]:
        """(correct count, examples counted) on the clean batch: from ``clean``, a forward
        the framework made anyway, else from an extra gradient-free forward only if
        ``measure``, else nothing, (0, 0)."""
        if clean is not None:
            return correct_count(clean, y), int(y.shape[0])
        if measure:
            return correct_count(self.clean_outputs(model, x), y), int(y.shape[0])
        return torch.zeros((), dtype=torch.int64, device=y.device), 0

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor,
                   y: Tensor, measure_clean: bool = False) -> StepStats:
        """Craft, compute the outer loss, and take one optimizer step.

        Clean accuracy comes from the outer loss's clean forward where there is one (ALP,
        TRADES); otherwise (PGD-AT, FastAT, FreeAT) a step makes no clean forward for it
        unless ``measure_clean`` (then one no-grad forward in crafting mode after the update).
        """
        result = self.loss(model, x, y)
        adv_correct = correct_count(result.adv, y)  # before the step changes the head weight
        if result.clean is not None:
            clean_correct, clean_count = self.clean_accuracy(model, x, y, result.clean)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        if result.clean is None:
            clean_correct, clean_count = self.clean_accuracy(model, x, y, measure=measure_clean)
        return StepStats(result.loss.detach(), clean_correct, adv_correct, int(y.shape[0]),
                         clean_count)

    def state_dict(self) -> dict:
        """State carried between steps (none by default); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, got keys {sorted(state)}")


def drop_in_framework(cls: Type[Framework], model: nn.Module, x: Tensor, y: Tensor,
                      optimizer: Optional[torch.optim.Optimizer], step_size: float,
                      epsilon: float, perturb_steps: int, random_start: str, he: bool,
                      scale: float, margin: float, backend: str,
                      generator: Optional[torch.Generator], distance: str, eval_mode: bool,
                      craft_scale: Optional[float], weight_norm: Optional[WeightNorm],
                      **settings: Any) -> Tensor:
    """The outer loss of framework ``cls`` (:meth:`Framework.drop_in_loss`), as the drop-in
    losses ``pgd_at_loss``, ``alp_loss`` and ``trades_loss`` compute it. Their options:

    - ``random_start``: "uniform" in the ε-ball (Madry et al., Bag of Tricks; the default of
      pgd_at_loss and alp_loss), "normal" x + 0.001·N(0, I), unclipped (AT_HE, TRADES; what
      trades_loss always uses), or "none".
    - ``distance``: the threat model, 'l_inf' or 'l_2' (also 'linf', 'Linf', 'l2', 'L2').
    - ``eval_mode``: True crafts with the model in eval mode (BN on running statistics:
      AT_HE, TRADES); False in its own train mode (BN on batch statistics, every crafting
      forward updating the running ones: Bag of Tricks without --BNeval, fast_adversarial).
    - ``craft_scale``: with HE, the s of the crafting loss (None: ``scale``; 1 crafts on
      unscaled cosines, as Bag of Tricks does).
    - ``weight_norm``: with HE, the head weight's normalization mode (None: the model head's
      own, True for a head that is not an HELinear; "project" is AT_HE's; see
      :class:`~heat_fast.training.objective.Objective`).
    """
    objective = Objective(he, scale, margin, backend, craft_scale=craft_scale,
                          weight_norm=weight_norm)
    distance = canonical_norm(distance, "distance")
    framework = cls(objective, epsilon, step_size, perturb_steps, start=random_start,
                    eval_mode=eval_mode, generator=generator, norm=distance, **settings)
    return framework.drop_in_loss(model, x, y, optimizer)
