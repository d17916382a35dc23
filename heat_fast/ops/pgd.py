"""Batched projected gradient step and random start: public functions and custom ops.

Fast backends implement two kernel functions on contiguous tensors of shape (B, ...), B >= 1:

``pgd_step_(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm, delta) -> None``
    writes SPEC §2.2's step into ``out``: from x_adv = ``start`` (position form) or from the
    perturbation δ = ``start`` (``delta=True``, returns δ'); ``out`` may be any input itself.
``random_init_(out, x_nat, eps, clip_lo, clip_hi, seed () int64, norm) -> None``
    writes a random start drawn deterministically from ``seed`` into ``out``.

``norm`` is "linf" or "l2". eps, alpha, clip_lo and clip_hi are float32 budgets
(heat_fast._step_args): a 0-d CPU tensor holding one value (read on the host), or a tensor on
the images' device that broadcasts to their shape (per sample, per channel, ...; per sample
only for L2's eps and alpha). They are wrapped as the mutating custom ops
``heat_fast::pgd_step_`` and ``heat_fast::random_init_``, which take the backend name as their
last argument and validate their arguments themselves. :func:`pgd_step` calls the native
backend's own dispatcher op ``heat_fast_C::pgd_step_`` directly, skipping this Python layer.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from heat_fast import _checks, _step_args, native, reference
from heat_fast._step_args import Budget, Clip
from heat_fast.ops.dispatch import kernels, resolve_backend

SEED_HIGH = 2**62


def _check_kernel_args(out: Tensor, images, budgets, norm: str) -> None:
    """What a direct call of the custom ops must get right (the public functions check more)."""
    if out.dim() < 1 or out.shape[0] < 1 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous (B, ...) tensor with B >= 1, got shape "
                         f"{tuple(out.shape)}")
    _checks.check_float("out", out)
    for name, t in images:
        _checks.check_float(name, t)
        if t.shape != out.shape or t.device != out.device or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous with out's shape {tuple(out.shape)} on "
                             f"{out.device}, got {tuple(t.shape)} on {t.device}")
    for name, b in budgets:
        if b.dtype != torch.float32:
            raise TypeError(f"{name} must be a float32 budget tensor, got {b.dtype}")
        if not (b.dim() == 0 and b.device.type == "cpu"):
            if b.device != out.device:
                raise ValueError(f"{name} must be a 0-d CPU tensor or on {out.device}")
            torch.broadcast_shapes(b.shape, out.shape)
    _step_args.canonical_norm(norm)


@torch.library.custom_op("heat_fast::pgd_step_", mutates_args=("out",))
def pgd_step_op(
    out: Tensor, start: Tensor, grad: Tensor, x_nat: Tensor, eps: Tensor, alpha: Tensor,
    clip_lo: Tensor, clip_hi: Tensor, norm: str, delta: bool, backend: str,
) -> None:
    """Projected step of ``backend`` written into ``out`` (see the module docstring)."""
    _check_kernel_args(out, (("start", start), ("grad", grad), ("x_nat", x_nat)),
                       (("eps", eps), ("alpha", alpha), ("clip_lo", clip_lo),
                        ("clip_hi", clip_hi)), norm)
    kernels(backend).pgd_step_(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm,
                               delta)


@pgd_step_op.register_fake
def _pgd_step_fake(out, start, grad, x_nat, eps, alpha, clip_lo, clip_hi, norm, delta, backend):
    return None


@torch.library.custom_op("heat_fast::random_init_", mutates_args=("out",))
def random_init_op(
    out: Tensor, x_nat: Tensor, eps: Tensor, clip_lo: Tensor, clip_hi: Tensor, seed: Tensor,
    norm: str, backend: str,
) -> None:
    """Random start of ``backend`` written into ``out`` (see the module docstring)."""
    _check_kernel_args(out, (("x_nat", x_nat),),
                       (("eps", eps), ("clip_lo", clip_lo), ("clip_hi", clip_hi)), norm)
    if seed.dim() != 0 or seed.dtype != torch.int64 or seed.device != out.device:
        raise ValueError(f"seed must be a 0-d int64 tensor on {out.device}")
    kernels(backend).random_init_(out, x_nat, eps, clip_lo, clip_hi, seed, norm)


@random_init_op.register_fake
def _random_init_fake(out, x_nat, eps, clip_lo, clip_hi, seed, norm, backend):
    return None


def pgd_step(
    x_adv: Tensor,
    grad: Tensor,
    x_nat: Tensor,
    eps: Budget,
    alpha: Budget,
    norm: str = "linf",
    clip: Clip = (0.0, 1.0),
    out: Optional[Tensor] = None,
    backend: Optional[str] = "auto",
) -> Tensor:
    """One projected ascent step for a batch, SPEC §2.2 (position form).

    x_adv, grad, x_nat: (B, ...) float32/16/bf16 of one shape, any strides (B = 0 gives an
    empty result). eps, alpha: numbers, (B,) per-sample tensors, or tensors broadcastable to
    x (e.g. (C, 1, 1) per channel; L∞ only), eps >= 0 (may be inf), alpha >= 0 and finite.
    ``norm`` "linf" or "l2" (also "Linf", "l_inf", "L2", "l_2"); ``clip`` the box (lo, hi) of
    numbers or broadcastable tensors, or None. Returns x' in x_adv's dtype; with ``out``
    (which may be x_adv itself, but must not overlap an input partially) writes x' there and
    returns it. Non-finite policy: heat_fast._step_args.
    """
    return _step(x_adv, grad, x_nat, eps, alpha, norm, clip, out, backend, delta=False)


def pgd_delta_step(
    delta: Tensor,
    grad: Tensor,
    x_nat: Tensor,
    eps: Budget,
    alpha: Budget,
    norm: str = "linf",
    clip: Clip = (0.0, 1.0),
    out: Optional[Tensor] = None,
    backend: Optional[str] = "auto",
) -> Tensor:
    """The same step on the perturbation δ = x_adv − x_nat, as FreeAT/FastAT code writes it.

    L∞: δ' = clamp(clamp(δ + α·sign(g), −ε, ε), lo − x_nat, hi − x_nat); L2: δ + α·g/‖g‖
    projected onto the ε-ball, then the same box clamp. Arguments as :func:`pgd_step` (eps,
    alpha and clip in the units of δ, e.g. per channel in normalized input space); returns δ'.
    """
    return _step(delta, grad, x_nat, eps, alpha, norm, clip, out, backend, delta=True)


def _step(start: Tensor, grad: Tensor, x_nat: Tensor, eps: Budget, alpha: Budget, norm: str,
          clip: Clip, out: Optional[Tensor], backend: Optional[str], delta: bool) -> Tensor:
    first = "delta" if delta else "x_adv"
    _step_args.check_images(start, grad, x_nat, first)
    name = resolve_backend(backend, start.device, start.dtype)
    if name == "reference":
        fn = reference.pgd_delta_step if delta else reference.pgd_step
        return fn(start, grad, x_nat, eps, alpha, norm, clip, out)
    norm, eps_t, alpha_t, lo, hi = _step_args.step_arguments(start, grad, x_nat, eps, alpha, norm,
                                                           clip, out, first)
    target = out if out is not None and out.is_contiguous() else torch.empty_like(
        start, memory_format=torch.contiguous_format)
    if start.numel() > 0:
        args = (target, start.contiguous(), grad.contiguous(), x_nat.contiguous(), eps_t,
                alpha_t, lo, hi, norm, delta)
        if name == "native":
            native.pgd_step_(*args)
        else:
            pgd_step_op(*args, name)
    if out is not None and target is not out:
        return out.copy_(target)
    return target


def random_init(
    x_nat: Tensor,
    eps: Budget,
    norm: str = "linf",
    clip: Clip = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
    backend: Optional[str] = "auto",
) -> Tensor:
    """A random start in the ε-ball around x_nat (B, ...), clipped to the box, SPEC §2.2.

    L∞: uniform in [−ε, ε] per element (eps and clip may be per channel, as for
    :func:`pgd_step`); L2: a uniform direction times radius ε·U(0, 1) (per-sample eps). The
    same ``generator`` state gives the same start on the same backend and device; the
    generator must be on x_nat's device (the seed is drawn there, without a host sync).
    Returns a new tensor in x_nat's dtype (empty for B = 0).
    """
    _checks.check_float("x_nat", x_nat)
    if x_nat.dim() < 1:
        raise ValueError("x_nat must have shape (B, ...), got a 0-d tensor")
    norm = _step_args.canonical_norm(norm)
    _checks.check_generator(generator, x_nat)
    name = resolve_backend(backend, x_nat.device, x_nat.dtype)
    if name == "reference":
        return reference.random_init(x_nat, eps, norm, clip, generator)
    eps_t = _step_args.budget("eps", eps, x_nat, per_sample_only=norm == "l2")
    lo, hi = _step_args.box(clip, x_nat)
    out = torch.empty_like(x_nat, memory_format=torch.contiguous_format)
    if x_nat.numel() == 0:
        return out
    seed = torch.randint(SEED_HIGH, (), generator=generator, device=x_nat.device,
                         dtype=torch.int64)
    args = (out, x_nat.contiguous(), eps_t, lo, hi, seed, norm)
    if name == "native":
        native.random_init_(*args)
    else:
        random_init_op(*args, name)
    return out
