"""The attack loop every framework shares: mode switching, frozen weights, input gradients, PGD.

Updates use the fused :func:`heat_fast.pgd_step` / :func:`heat_fast.random_init` with the
framework's backend, on the batch's own memory layout (a channels_last batch is stepped in
place of its NHWC memory, without layout copies). Input gradients come from
``torch.autograd.grad`` with every parameter's ``requires_grad`` off (:func:`crafting`), so
crafting neither touches the parameters' ``.grad`` nor computes weight gradients, eager or
compiled; eval-mode BatchNorm runs folded into the convolution before it and convolution
weights are cast to the autocast dtype once per attack (:mod:`heat_fast.training.folding`). One step (:func:`attack_step`) makes no host
synchronisation and no data-dependent Python branch: it compiles with ``fullgraph=True`` and
can be captured in a CUDA graph.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from heat_fast.attacks.core import frozen_parameters
from heat_fast.ops import pgd_step, random_init
from heat_fast.training.folding import crafting_convolutions

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


@contextlib.contextmanager
def crafting(model: nn.Module, eval_mode: bool = True,
             dtype: Optional[torch.dtype] = None) -> Iterator[None]:
    """The state of an attack: :func:`crafting_mode`, :func:`frozen_parameters`, and the
    convolutions with eval-mode BatchNorm folded in and weights cast once to ``dtype``, the
    autocast dtype of the attack's forward (None: as they are;
    :func:`heat_fast.training.folding.crafting_convolutions`)."""
    with crafting_mode(model, eval_mode), frozen_parameters(model):
        with crafting_convolutions(model, dtype):
            yield


def input_gradient(loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """d loss_fn(x) / dx for a scalar loss, without accumulating into parameter grads.

    The gradient has x's dtype (float32 for float32 inputs, also under bf16 autocast)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _channels_last(t: Tensor, *budgets: object) -> bool:
    """A 4-D batch laid out channels_last (and not also plain contiguous), with budgets that
    are plain numbers (a tensor budget may broadcast over the NCHW dimensions)."""
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last)
            and all(isinstance(b, (int, float)) for b in budgets))


def _nhwc(t: Tensor) -> Tensor:
    """The contiguous NHWC view of a channels_last batch (made channels_last if it is not)."""
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _nchw(t: Tensor) -> Tensor:
    """The NCHW view (channels_last memory) of an NHWC tensor from :func:`_nhwc`."""
    return t.permute(0, 3, 1, 2)


def project(x_adv: Tensor, grad: Tensor, x_nat: Tensor, eps: float, alpha: float,
            norm: str = "linf", clip: Optional[Sequence[float]] = (0.0, 1.0),
            backend: str = "auto") -> Tensor:
    """:func:`heat_fast.pgd_step` in x_adv's memory layout.

    The step is per element (L∞) or per sample (L2), so it may run on any order of a
    sample's elements: a channels_last batch with number budgets is stepped as its contiguous
    NHWC memory and comes back channels_last, where pgd_step alone would copy each input to
    NCHW.
    """
    if _channels_last(x_adv, eps, alpha):
        return _nchw(pgd_step(_nhwc(x_adv), _nhwc(grad), _nhwc(x_nat), eps, alpha, norm=norm,
                              clip=clip, backend=backend))
    return pgd_step(x_adv, grad, x_nat, eps, alpha, norm=norm, clip=clip, backend=backend)


def start_point(x: Tensor, eps: float, start: str, generator: Optional[torch.Generator],
                norm: str = "linf", backend: str = "auto") -> Tensor:
    """The attack's first iterate, in x's memory layout: ``uniform`` in the ε-ball (clipped
    to [0, 1]), ``normal`` x + 0.001·N(0, I) (TRADES / AT_HE), or ``none`` (x itself)."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if start == "none":
        return x.clone()
    layout_view, back = (_nhwc, _nchw) if _channels_last(x, eps) else (lambda t: t, lambda t: t)
    view = layout_view(x)
    if start == "uniform":
        return back(random_init(view, eps, norm, generator=generator, backend=backend))
    noise = torch.randn(view.shape, generator=generator, device=x.device, dtype=x.dtype)
    return back(view + NORMAL_START_STD * noise)


def attack_step(loss_fn: Callable[[Tensor], Tensor], x_adv: Tensor, x_nat: Tensor, eps: float,
                alpha: float, norm: str = "linf", backend: str = "auto") -> Tensor:
    """One projected ascent step on ``loss_fn`` from x_adv (see :func:`project`)."""
    return project(x_adv, input_gradient(loss_fn, x_adv), x_nat, eps, alpha, norm,
                   backend=backend)


def run_attack(model: nn.Module, x: Tensor, iterate: Callable[[Tensor, Tensor], Tensor],
               eps: float, start: str = "uniform", generator: Optional[torch.Generator] = None,
               norm: str = "linf", eval_mode: bool = True, backend: str = "auto",
               dtype: Optional[torch.dtype] = None) -> Tensor:
    """``iterate(x_start, x)`` from :func:`start_point`, with ``model`` in
    :func:`crafting` state; returns its result detached."""
    x = x.detach()
    with crafting(model, eval_mode, dtype):
        x_adv = iterate(start_point(x, eps, start, generator, norm, backend), x)
    return x_adv.detach()


def pgd_attack(model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor], eps: float,
               alpha: float, steps: int, start: str = "uniform",
               generator: Optional[torch.Generator] = None, norm: str = "linf",
               eval_mode: bool = True, backend: str = "auto",
               dtype: Optional[torch.dtype] = None) -> Tensor:
    """Maximize ``loss_fn(x_adv)`` over the ε-ball around x (inputs in [0, 1]).

    ``steps`` projected steps of size ``alpha`` (:func:`attack_step`) from
    :func:`start_point`, run by :func:`run_attack`; ``dtype`` is the autocast dtype under
    which ``loss_fn`` runs the model (e.g. torch.bfloat16), if any, so that the convolution
    weights are cast once per attack (see :func:`crafting`). Returns the detached adversarial
    batch in x's memory layout; x is not modified.
    """
    def iterate(x_adv: Tensor, x_nat: Tensor) -> Tensor:
        for _ in range(steps):
            x_adv = attack_step(loss_fn, x_adv, x_nat, eps, alpha, norm, backend)
        return x_adv

    return run_attack(model, x, iterate, eps, start, generator, norm, eval_mode, backend, dtype)
