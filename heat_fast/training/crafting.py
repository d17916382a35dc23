"""The attack loop every framework shares: mode switching, input gradients, PGD.

Updates use the fused :func:`heat_fast.pgd_step` / :func:`heat_fast.random_init` with the
framework's backend; input gradients come from ``torch.autograd.grad`` so crafting never
touches the parameters' ``.grad``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from heat_fast.ops import pgd_step, random_init

STARTS = ("uniform", "normal", "none")
NORMAL_START_STD = 0.001


@contextlib.contextmanager
def crafting_mode(model: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Put ``model`` in eval mode (BN uses running stats) while crafting, if ``eval_mode``.

    On exit every submodule gets back its own previous ``training`` flag, so a mix of
    train and eval submodules is restored exactly.
    """
    modes = [(module, module.training) for module in model.modules()]
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def input_gradient(loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """d loss_fn(x) / dx for a scalar loss, without accumulating into parameter grads."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def start_point(x: Tensor, eps: float, start: str, generator: Optional[torch.Generator],
                norm: str = "linf", backend: str = "auto") -> Tensor:
    """The attack's first iterate: ``uniform`` in the ε-ball (clipped to [0, 1]),
    ``normal`` x + 0.001·N(0, I) (TRADES / AT_HE), or ``none`` (x itself)."""
    if start == "uniform":
        return random_init(x, eps, norm, generator=generator, backend=backend)
    if start == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + NORMAL_START_STD * noise
    if start == "none":
        return x.clone()
    raise ValueError(f"start must be one of {STARTS}, got {start!r}")


def pgd_attack(model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor], eps: float,
               alpha: float, steps: int, start: str = "uniform",
               generator: Optional[torch.Generator] = None, norm: str = "linf",
               eval_mode: bool = True, backend: str = "auto") -> Tensor:
    """Maximize ``loss_fn(x_adv)`` over the ε-ball around x (inputs in [0, 1]).

    ``steps`` projected steps of size ``alpha`` from :func:`start_point`, with the model in
    :func:`crafting_mode`. Returns the detached adversarial batch; x is not modified.
    """
    x = x.detach()
    with crafting_mode(model, eval_mode):
        x_adv = start_point(x, eps, start, generator, norm, backend)
        for _ in range(steps):
            grad = input_gradient(loss_fn, x_adv)
            x_adv = pgd_step(x_adv, grad, x, eps, alpha, norm=norm, backend=backend)
    return x_adv.detach()
