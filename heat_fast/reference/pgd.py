"""Reference projected gradient step and random start (SPEC §2.2), in plain torch.

L∞:  x' = clip(min(max(x_adv + α·sign(g), x_nat − ε), x_nat + ε))      (project, then clip)
L2:  u = g / max(‖g‖, 1e-12);  δ = x_adv + α·u − x_nat;
     δ ← δ · min(1, ε / max(‖δ‖, 1e-12));  x' = clip(x_nat + δ)

sign(0) = 0. A NaN gradient element gives no step for that element (L∞); for L2 every
non-finite gradient element counts as 0. Math in float32, the result in x_adv's dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from heat_fast import _checks

NORM_EPS = 1e-12


def _per_sample_view(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.view((-1,) + (1,) * (like.dim() - 1))


def _sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(NORM_EPS)


def _math_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_nat: torch.Tensor,
    eps: _checks.Budget,
    alpha: _checks.Budget,
    norm: str = "linf",
    clip: Optional[Sequence[float]] = (0.0, 1.0),
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One projected ascent step for a batch (B, ...); eps/alpha are floats or (B,) tensors."""
    _checks.check_pgd_inputs(x_adv, grad, x_nat, out)
    norm = _checks.check_norm(norm)
    lo, hi = _checks.check_clip(clip)
    dtype = _math_dtype(x_adv)
    eps_b = _per_sample_view(_checks.per_sample("eps", eps, x_adv).to(dtype), x_adv)
    alpha_b = _per_sample_view(_checks.per_sample("alpha", alpha, x_adv).to(dtype), x_adv)
    xa, g, xn = x_adv.to(dtype), grad.to(dtype), x_nat.to(dtype)
    if norm == "linf":
        step = torch.where(torch.isnan(g), torch.zeros_like(g), torch.sign(g))
        x = xa + alpha_b * step
        x = torch.minimum(torch.maximum(x, xn - eps_b), xn + eps_b)
    else:
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
        u = g / _per_sample_view(_sample_norm(g), g)
        delta = xa + alpha_b * u - xn
        shrink = torch.clamp(eps_b / _per_sample_view(_sample_norm(delta), delta), max=1.0)
        x = xn + delta * shrink
    x = x.clamp(lo, hi).to(x_adv.dtype)
    if out is None:
        return x
    return out.copy_(x)


def random_init(
    x_nat: torch.Tensor,
    eps: _checks.Budget,
    norm: str = "linf",
    clip: Optional[Sequence[float]] = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """A random start in the ε-ball around x_nat, clipped to the box.

    L∞: x_nat + U(−ε, ε) per element. L2: x_nat + ε·r·d with d uniform on the unit sphere
    and r ~ U(0, 1) per sample.
    """
    _checks.check_float("x_nat", x_nat)
    norm = _checks.check_norm(norm)
    lo, hi = _checks.check_clip(clip)
    _checks.check_generator(generator, x_nat)
    dtype = _math_dtype(x_nat)
    eps_b = _per_sample_view(_checks.per_sample("eps", eps, x_nat).to(dtype), x_nat)
    xn = x_nat.to(dtype)
    if norm == "linf":
        noise = torch.rand(xn.shape, generator=generator, dtype=dtype, device=xn.device)
        delta = (2 * noise - 1) * eps_b
    else:
        direction = torch.randn(xn.shape, generator=generator, dtype=dtype, device=xn.device)
        direction = direction / _per_sample_view(_sample_norm(direction), direction)
        radius = torch.rand(xn.shape[0], generator=generator, dtype=dtype, device=xn.device)
        delta = direction * _per_sample_view(radius, direction) * eps_b
    return (xn + delta).clamp(lo, hi).to(x_nat.dtype)
