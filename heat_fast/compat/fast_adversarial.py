"""fast_adversarial (github.com/locuslab/fast_adversarial, CIFAR10: ``utils.py``,
``train_fgsm.py``, ``train_free.py``) on the fused delta-form step.

That code keeps the perturbation δ in *normalized* input space (its loader applies the
CIFAR-10 mean/std), so ε, α and the image box are per-channel tensors (3, 1, 1):
ε = (8/255)/std, box [(0 − μ)/σ, (1 − μ)/σ]. Every δ update here is one fused
:func:`heat_fast.ops.pgd_delta_step` with those per-channel budgets:
δ' = clamp(clamp(δ + α·sign g, −ε, ε), lower_limit − X, upper_limit − X).

- :func:`attack_pgd`: ``utils.attack_pgd`` (signature and behaviour: per-channel uniform
  start, steps only on still-correct examples, stop when none is, keep the restart of
  highest loss per example).
- :func:`uniform_delta`: the ``--delta-init random`` start of ``train_fgsm.py``.
- :func:`fgsm_delta_step`: the FGSM crafting lines of ``train_fgsm.py``'s loop.
- :func:`update_delta`: the δ update both ``train_fgsm.py`` and ``train_free.py`` write.

The random start is drawn exactly as the public code draws it (``uniform_`` per channel on δ's
device) so the same seed gives the same δ. Differences: apex ``amp`` is not used — ``opt`` is
accepted and ignored, since a loss scale cannot change sign(∇) — and the crafting gradient is
taken with respect to δ only (the public ``backward`` also fills the parameters' ``.grad``,
which the caller's ``opt.zero_grad()`` clears before the training backward). Results agree to
float32 rounding (tests/test_compat.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat_fast.ops import pgd_delta_step

cifar10_mean = (0.4914, 0.4822, 0.4465)
cifar10_std = (0.2471, 0.2435, 0.2616)
mu = torch.tensor(cifar10_mean).view(3, 1, 1)
std = torch.tensor(cifar10_std).view(3, 1, 1)
upper_limit = (1 - mu) / std
lower_limit = (0 - mu) / std


def clamp(X: Tensor, lower_limit: Tensor, upper_limit: Tensor) -> Tensor:
    """``utils.clamp``: elementwise max(min(X, upper), lower)."""
    return torch.max(torch.min(X, upper_limit), lower_limit)


def _box(X: Tensor):
    return lower_limit.to(X.device), upper_limit.to(X.device)


def update_delta(delta: Tensor, grad: Tensor, X: Tensor, epsilon: Tensor,
                 alpha: Tensor) -> Tensor:
    """The public δ update, in place and returned: δ ← clamp(δ + α·sign(grad), −ε, ε), then
    the first ``len(X)`` rows clamped to the normalized image box around X. ``delta`` may
    have more rows than X (``--delta-init previous`` keeps a full-batch δ for a smaller last
    batch); their gradient is zero there, so they keep their (already ε-bounded) values.
    epsilon and alpha: numbers or per-channel (3, 1, 1) tensors in normalized units."""
    n = len(X)
    pgd_delta_step(delta[:n].detach(), grad[:n], X, epsilon, alpha, "linf", _box(X),
                   out=delta.data[:n])
    return delta


def uniform_delta(X: Tensor, epsilon: Tensor) -> Tensor:
    """``train_fgsm.py``'s random start: δ_c ~ U(−ε_c, ε_c) per channel (drawn channel by
    channel on X's device, as the public code), clamped to the normalized box around X."""
    delta = torch.zeros_like(X)
    for i in range(len(epsilon)):
        bound = epsilon[i][0][0].item()
        delta[:, i, :, :].uniform_(-bound, bound)
    lower, upper = _box(X)
    return clamp(delta, lower - X, upper - X)


def _delta_grad(model: nn.Module, X: Tensor, y: Tensor, delta: Tensor) -> Tensor:
    delta = delta.detach().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(model(X + delta[:len(X)]), y)
    return torch.autograd.grad(loss, [delta])[0]


def fgsm_delta_step(model: nn.Module, X: Tensor, y: Tensor, delta: Tensor, epsilon: Tensor,
                    alpha: Tensor, opt: Optional[torch.optim.Optimizer] = None) -> Tensor:
    """``train_fgsm.py``'s crafting: one forward of ``model`` as it is (train mode there, so
    BN statistics move as in the public code), then :func:`update_delta` with step ``alpha``.
    Returns the new δ, detached (a new tensor; ``delta`` is left unchanged). ``opt`` is
    ignored (module docstring)."""
    new = delta.detach().clone()
    return update_delta(new, _delta_grad(model, X, y, delta), X, epsilon, alpha)


def attack_pgd(model: nn.Module, X: Tensor, y: Tensor, epsilon: Tensor, alpha: Tensor,
               attack_iters: int, restarts: int,
               opt: Optional[torch.optim.Optimizer] = None) -> Tensor:
    """Replaces ``utils.attack_pgd``: L∞ PGD in normalized space with per-channel ε and α
    ((3, 1, 1) tensors), ``restarts`` uniform starts, ``attack_iters`` steps that move only
    the examples the model still classifies correctly (the loop stops when there are none),
    and per example the δ of the restart with the highest final CE. Returns that δ."""
    max_loss = torch.zeros(y.shape[0], device=X.device)
    max_delta = torch.zeros_like(X)
    for _ in range(restarts):
        delta = uniform_delta(X, epsilon)
        for _ in range(attack_iters):
            delta.requires_grad_()
            with torch.enable_grad():
                output = model(X + delta)
                loss = F.cross_entropy(output, y)
            correct = output.max(1)[1] == y
            if not bool(correct.any()):
                break
            grad = torch.autograd.grad(loss, [delta])[0]
            delta = delta.detach()
            stepped = update_delta(delta.clone(), grad, X, epsilon, alpha)
            delta = torch.where(correct.view(-1, *(1,) * (X.dim() - 1)), stepped, delta)
        delta = delta.detach()
        with torch.no_grad():
            all_loss = F.cross_entropy(model(X + delta), y, reduction="none")
        better = all_loss >= max_loss
        max_delta[better] = delta[better]
        max_loss = torch.max(max_loss, all_loss)
    return max_delta
