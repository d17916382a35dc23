"""Batched projected gradient step and random start: public functions and custom ops.

Fast backends implement two kernel functions on contiguous tensors of shape (B, ...):

``pgd_step_(out, x_adv, grad, x_nat, eps (B,) f32, alpha (B,) f32, norm, clip_min,
clip_max) -> None``
    writes SPEC §2.2's step into ``out``; ``out`` may be ``x_adv`` itself.
``random_init_(out, x_nat, eps (B,) f32, seed () int64, norm, clip_min, clip_max) -> None``
    writes a random start drawn deterministically from ``seed`` into ``out``.

``norm`` is "linf" or "l2"; an open box is clip_min = -inf, clip_max = inf. They are
wrapped as the mutating custom ops ``heat_fast::pgd_step_`` and ``heat_fast::random_init_``,
which take the backend name as their last argument. :func:`pgd_step` calls the native
backend's own dispatcher op ``heat_fast_C::pgd_step_`` directly, skipping this Python layer.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from heat_fast import _checks, native, reference
from heat_fast.ops.dispatch import kernels, resolve_backend

SEED_HIGH = 2**62


@torch.library.custom_op("heat_fast::pgd_step_", mutates_args=("out",))
def pgd_step_op(
    out: Tensor, x_adv: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
    norm: str, clip_min: float, clip_max: float, backend: str,
) -> None:
    """Projected step of ``backend`` written into ``out`` (see the module docstring)."""
    kernels(backend).pgd_step_(out, x_adv, grad, x_nat, eps, alpha, norm, clip_min, clip_max)


@pgd_step_op.register_fake
def _pgd_step_fake(out, x_adv, grad, x_nat, eps, alpha, norm, clip_min, clip_max, backend):
    return None


@torch.library.custom_op("heat_fast::random_init_", mutates_args=("out",))
def random_init_op(
    out: Tensor, x_nat: Tensor, eps: Tensor, seed: Tensor, norm: str, clip_min: float,
    clip_max: float, backend: str,
) -> None:
    """Random start of ``backend`` written into ``out`` (see the module docstring)."""
    kernels(backend).random_init_(out, x_nat, eps, seed, norm, clip_min, clip_max)


@random_init_op.register_fake
def _random_init_fake(out, x_nat, eps, seed, norm, clip_min, clip_max, backend):
    return None


def pgd_step(
    x_adv: Tensor,
    grad: Tensor,
    x_nat: Tensor,
    eps: _checks.Budget,
    alpha: _checks.Budget,
    norm: str = "linf",
    clip: Optional[Sequence[float]] = (0.0, 1.0),
    out: Optional[Tensor] = None,
    backend: Optional[str] = "auto",
) -> Tensor:
    """One projected ascent step for a batch, SPEC §2.2.

    x_adv, grad, x_nat: (B, ...) float32/16/bf16 of one shape, any strides. eps, alpha:
    floats or (B,) tensors (per-sample budgets and steps), eps >= 0. ``norm`` "linf" or
    "l2"; ``clip`` the box (lo, hi) or None. Returns x' in x_adv's dtype; with ``out``
    (which may be x_adv itself) writes x' there and returns it. The delta form
    δ ← clamp(δ + α·sign(g), −ε, ε) of FreeAT/FastAT is this step with x_adv = x + δ.
    """
    _checks.check_pgd_inputs(x_adv, grad, x_nat, out)
    norm = _checks.check_norm(norm)
    lo, hi = _checks.check_clip(clip)
    name = resolve_backend(backend, x_adv.device, x_adv.dtype)
    if name == "reference":
        return reference.pgd_step(x_adv, grad, x_nat, eps, alpha, norm, clip, out)
    eps_t = _checks.per_sample("eps", eps, x_adv)
    alpha_t = _checks.per_sample("alpha", alpha, x_adv)
    target = out if out is not None and out.is_contiguous() else torch.empty_like(
        x_adv, memory_format=torch.contiguous_format
    )
    args = (target, x_adv.contiguous(), grad.contiguous(), x_nat.contiguous(), eps_t, alpha_t,
            norm, lo, hi)
    if name == "native":
        native.pgd_step_(*args)
    else:
        pgd_step_op(*args, name)
    if out is not None and target is not out:
        return out.copy_(target)
    return target


def random_init(
    x_nat: Tensor,
    eps: _checks.Budget,
    norm: str = "linf",
    clip: Optional[Sequence[float]] = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
    backend: Optional[str] = "auto",
) -> Tensor:
    """A random start in the ε-ball around x_nat (B, ...), clipped to the box, SPEC §2.2.

    L∞: uniform in [−ε, ε] per element; L2: a uniform direction times radius ε·U(0, 1).
    The same ``generator`` state gives the same start on the same backend and device; the
    generator must be on x_nat's device (the seed is drawn there, without a host sync).
    Returns a new tensor in x_nat's dtype.
    """
    _checks.check_float("x_nat", x_nat)
    norm = _checks.check_norm(norm)
    lo, hi = _checks.check_clip(clip)
    _checks.check_generator(generator, x_nat)
    name = resolve_backend(backend, x_nat.device, x_nat.dtype)
    if name == "reference":
        return reference.random_init(x_nat, eps, norm, clip, generator)
    eps_t = _checks.per_sample("eps", eps, x_nat)
    seed = torch.randint(SEED_HIGH, (), generator=generator, device=x_nat.device,
                         dtype=torch.int64)
    out = torch.empty_like(x_nat, memory_format=torch.contiguous_format)
    random_init_op(out, x_nat.contiguous(), eps_t, seed, norm, lo, hi, name)
    return out
