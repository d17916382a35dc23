"""The official TRADES (github.com/yaodongyu/TRADES, ``trades.py``) ``trades_loss`` on the
fused ops, with its signature, defaults and algorithm, for code that imports it.

heat_fast's own :func:`heat_fast.training.trades_loss` keeps cleaner semantics (two training
forwards, one L2 rule shared with every attack); this one is the official algorithm step by
step:

- BN (every module) in eval mode while crafting; start x + 0.001·N(0, I) from the CPU
  generator.
- ``distance='l_inf'``: ``perturb_steps`` steps x' = clip₀¹(Π_ε(x + step_size·sign ∇KL)),
  each one fused :func:`heat_fast.ops.pgd_step`.
- ``distance='l_2'``: the official optimizer-on-δ loop. A second 0.001·N(0, I) draw is δ;
  each step moves δ by 2ε/perturb_steps along ∇KL/‖∇KL‖ (a sample whose gradient is exactly
  zero moves by −lr·N(0, I) instead, drawn with ``torch.randn_like`` as the official code
  does), *clips x + δ to [0, 1] first and then projects δ onto the ε-ball* (``renorm``);
  ``step_size`` is unused. Both moves are fused :func:`heat_fast.ops.pgd_delta_step` calls.
- then ``model.train()``, ``optimizer.zero_grad()`` and *three* train-mode forwards in the
  official order — model(x), model(x_adv), model(x) — so BN running statistics move as in
  the official code; the loss CE(model(x), y) + β·Σ KL(p(x) ‖ p(x_adv))/B keeps the
  gradient through the KL target (the third forward), as the official code does.

Differences: the clean probabilities crafting compares against are computed once per call (the
official loop recomputes the identical eval-mode value every step); gradients are taken with
respect to the input (or δ) only, where the official L2 loop's ``backward`` also fills the
parameters' ``.grad`` until ``optimizer.zero_grad()`` clears it; a ``distance`` other than
'l_inf' / 'l_2' raises ValueError (the official code silently skips the attack). Floating
point: the L2 box clip is clamp(δ, −x, 1 − x) (official: clamp(x + δ, 0, 1) − x) and the
projection scales by ε/‖δ‖ (official ``renorm``: ε/(‖δ‖ + 1e-7)); δ agrees to float32 rounding
(tests/test_compat.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast.compat._common import check_choice, kl_sum, linf_pgd, normal_start
from heat_fast.ops import pgd_delta_step


def _l2_delta(kl_at, x_natural: Tensor, epsilon: float, perturb_steps: int) -> Tensor:
    """The official L2 loop (module docstring); returns δ."""
    delta = normal_start(torch.zeros_like(x_natural))
    lr = epsilon / perturb_steps * 2
    no_grad = torch.zeros_like(delta)
    for _ in range(perturb_steps):
        delta.requires_grad_()
        with torch.enable_grad():
            grad = torch.autograd.grad(kl_at(x_natural + delta), [delta])[0]
        delta = delta.detach()
        alpha = torch.full((len(delta),), lr, device=delta.device)
        zero = grad.flatten(1).norm(p=2, dim=1) == 0
        if zero.any():
            # The official SGD step there is δ − lr·r with r ~ N(0, I): a step of lr·‖r‖
            # along the unit direction −r/‖r‖.
            noise = torch.randn_like(grad[zero])
            grad[zero] = -noise
            alpha[zero] = lr * noise.flatten(1).norm(p=2, dim=1)
        delta = pgd_delta_step(delta, grad, x_natural, float("inf"), alpha, "l2", (0.0, 1.0))
        delta = pgd_delta_step(delta, no_grad, x_natural, epsilon, 0.0, "l2", None)
    return delta


def trades_loss(model: nn.Module, x_natural: Tensor, y: Tensor,
                optimizer: torch.optim.Optimizer, step_size: float = 0.003,
                epsilon: float = 0.031, perturb_steps: int = 10, beta: float = 1.0,
                distance: str = "l_inf") -> Tensor:
    """Replaces the official TRADES ``trades_loss`` (same signature and defaults): crafts,
    zeroes ``optimizer``'s gradients and returns CE(clean) + β·Σ KL(p(x) ‖ p(x_adv))/B for the
    caller's backward. Algorithm and documented differences: the module docstring."""
    check_choice("distance", distance, ("l_inf", "l_2"))
    model.eval()
    with torch.no_grad():
        clean_probs = F.softmax(model(x_natural), dim=1)
    x_adv = normal_start(x_natural)

    def kl_at(x: Tensor) -> Tensor:
        return kl_sum(model(x), clean_probs)

    if distance == "l_inf":
        x_adv = linf_pgd(kl_at, x_adv, x_natural, step_size, epsilon, perturb_steps)
    else:
        x_adv = x_natural + _l2_delta(kl_at, x_natural, epsilon, perturb_steps)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    logits_adv = model(x_adv)
    loss_robust = kl_sum(logits_adv, F.softmax(model(x_natural), dim=1)) / len(x_natural)
    return loss_natural + beta * loss_robust
