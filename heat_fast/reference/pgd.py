"""Reference projected gradient step and random start (SPEC §2.2), in plain torch.

Position form (x_adv → x'):
  L∞:  x' = clip(min(max(x_adv + α·sign(g), x_nat − ε), x_nat + ε))     (project, then clip)
  L2:  u = g / max(‖g‖, 1e-12);  δ = x_adv + α·u − x_nat;
       δ ← δ · min(1, ε / max(‖δ‖, 1e-12));  x' = clip(x_nat + δ)
Delta form (δ → δ', the update FreeAT/FastAT code writes), with the box [lo − x_nat, hi − x_nat]:
  L∞:  δ' = clamp(clamp(δ + α·sign(g), −ε, ε), lo − x_nat, hi − x_nat)
  L2:  δ' = δ + α·u;  δ' ← δ' · min(1, ε / max(‖δ'‖, 1e-12));  then the same box clamp

eps, alpha and the clip bounds are budgets (heat_fast._step_args: numbers, per-sample or e.g.
per-channel tensors; per-sample only for L2). sign(0) = 0; the non-finite policy is the one of
heat_fast._step_args. Norms are accumulated in float64 (no overflow of Σg² in float32); all
other math in float32 (float64 for float64 inputs), the result in the input's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from heat_fast import _step_args
from heat_fast._step_args import Budget, Clip

NORM_EPS = 1e-12


def _math_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _sample_norm(t: torch.Tensor) -> torch.Tensor:
    """‖t_b‖ per sample as a (B, 1, ..., 1) tensor in t's dtype, summed in float64."""
    norms = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1, dtype=torch.float64)
    return norms.clamp_min(NORM_EPS).to(t.dtype).reshape((-1,) + (1,) * (t.dim() - 1))


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """sign(g) with NaN → 0 (L∞), or g/‖g‖ with non-finite elements as 0 (L2)."""
    if norm == "linf":
        return torch.where(torch.isnan(g), torch.zeros_like(g), torch.sign(g))
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    return g / _sample_norm(g)


def _clamp(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return torch.minimum(torch.maximum(x, lo), hi)  # NaN in x stays NaN


def step(start: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, eps: torch.Tensor,
         alpha: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, norm: str,
         delta: bool) -> torch.Tensor:
    """The step on checked arguments (budgets from heat_fast._step_args), in start's dtype."""
    dtype = _math_dtype(start)
    s, xn = start.to(dtype), x_nat.to(dtype)
    eps, alpha, lo, hi = (b.to(device=start.device, dtype=dtype) for b in (eps, alpha, lo, hi))
    moved = s + alpha * _direction(grad.to(dtype), norm)
    if norm == "linf":
        if delta:
            result = _clamp(_clamp(moved, -eps, eps), lo - xn, hi - xn)
        else:
            result = _clamp(_clamp(moved, xn - eps, xn + eps), lo, hi)
    else:
        d = moved if delta else moved - xn
        d = d * torch.clamp(eps / _sample_norm(d), max=1.0)
        result = _clamp(d, lo - xn, hi - xn) if delta else _clamp(xn + d, lo, hi)
    return result.to(start.dtype)


def pgd_step(x_adv: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, eps: Budget,
             alpha: Budget, norm: str = "linf", clip: Clip = (0.0, 1.0),
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One projected ascent step for a batch (B, ...) in position form (module docstring)."""
    return _checked_step(x_adv, grad, x_nat, eps, alpha, norm, clip, out, delta=False)


def pgd_delta_step(delta: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor, eps: Budget,
                   alpha: Budget, norm: str = "linf", clip: Clip = (0.0, 1.0),
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One projected ascent step for a batch (B, ...) in delta form (module docstring)."""
    return _checked_step(delta, grad, x_nat, eps, alpha, norm, clip, out, delta=True)


def _checked_step(start, grad, x_nat, eps, alpha, norm, clip, out, delta: bool):
    first = "delta" if delta else "x_adv"
    _step_args.check_images(start, grad, x_nat, first)
    norm, eps_t, alpha_t, lo, hi = _step_args.step_arguments(start, grad, x_nat, eps, alpha, norm,
                                                           clip, out, first)
    if start.numel() == 0:
        result = start.clone()
    else:
        result = step(start, grad, x_nat, eps_t, alpha_t, lo, hi, norm, delta)
    return result if out is None else out.copy_(result)


def random_init(x_nat: torch.Tensor, eps: Budget, norm: str = "linf", clip: Clip = (0.0, 1.0),
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random start in the ε-ball around x_nat, clipped to the box.

    L∞: x_nat + U(−ε, ε) per element. L2: x_nat + ε·r·d with d uniform on the unit sphere
    and r ~ U(0, 1) per sample.
    """
    from heat_fast import _checks

    _checks.check_float("x_nat", x_nat)
    if x_nat.dim() < 1:
        raise ValueError("x_nat must have shape (B, ...), got a 0-d tensor")
    norm = _step_args.canonical_norm(norm)
    eps_t = _step_args.budget("eps", eps, x_nat, per_sample_only=norm == "l2")
    lo, hi = _step_args.box(clip, x_nat)
    _checks.check_generator(generator, x_nat)
    if x_nat.numel() == 0:
        return x_nat.clone()
    dtype = _math_dtype(x_nat)
    xn = x_nat.to(dtype)
    eps_t, lo, hi = (b.to(device=xn.device, dtype=dtype) for b in (eps_t, lo, hi))
    if norm == "linf":
        noise = torch.rand(xn.shape, generator=generator, dtype=dtype, device=xn.device)
        offset = (2 * noise - 1) * eps_t
    else:
        direction = torch.randn(xn.shape, generator=generator, dtype=dtype, device=xn.device)
        radius = torch.rand(xn.shape[0], generator=generator, dtype=dtype, device=xn.device)
        radius = radius.reshape((-1,) + (1,) * (xn.dim() - 1))
        offset = direction / _sample_norm(direction) * radius * eps_t
    return _clamp(xn + offset, lo, hi).to(x_nat.dtype)
