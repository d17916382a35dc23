"""Pieces the compat modules share: the public codebases' normal start, their L∞ PGD loop on
x_adv, their summed KL divergence, and argument checks that name the argument."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from heat_fast.ops import pgd_step


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """A ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def normal_start(x_natural: Tensor, std: float = 0.001) -> Tensor:
    """x + std·N(0, I), drawn as the public code draws it: ``torch.randn`` on the CPU's default
    generator, then moved to x's device (their ``torch.randn(shape).cuda()``), so the same
    ``torch.manual_seed`` gives the same start on every device. Not clipped to the box."""
    return x_natural.detach() + std * torch.randn(x_natural.shape).to(x_natural.device).detach()


def linf_pgd(loss_at: Callable[[Tensor], Tensor], x_adv: Tensor, x_natural: Tensor,
             step_size: float, epsilon: float, perturb_steps: int) -> Tensor:
    """``perturb_steps`` ascent steps on ``loss_at(x_adv)``: x' = clip₀¹(Π_ε(x + α·sign ∇)),
    the public TRADES-family loop, each step one fused :func:`heat_fast.ops.pgd_step`.
    Gradients go to x_adv only (no parameter gradients accumulate)."""
    for _ in range(perturb_steps):
        x_adv = x_adv.detach().requires_grad_()
        with torch.enable_grad():
            loss = loss_at(x_adv)
        grad = torch.autograd.grad(loss, [x_adv])[0]
        x_adv = pgd_step(x_adv.detach(), grad, x_natural, epsilon, step_size)
    return x_adv.detach()


def kl_sum(adv_logits: Tensor, clean_probs: Tensor) -> Tensor:
    """Σ KL(p ‖ softmax(adv_logits)) over the batch: ``nn.KLDivLoss(size_average=False)`` of
    ``log_softmax(adv_logits)`` against the probabilities ``clean_probs``."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), clean_probs, reduction="sum")
