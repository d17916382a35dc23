"""The smallest step onto a hyperplane inside a box, in L∞ or L2 (FAB's projection).

Per row: minimize ‖d‖ subject to ⟨w, d⟩ = c and lo ≤ p + d ≤ hi. Each coordinate moves
toward the hyperplane (sign(c)·sign(w_i)) by at most its room to the box. In L∞ a coordinate
moves min(τ, room_i) and contributes |w_i|·min(τ, room_i); in L2 (KKT) it moves
|w_i|·min(μ, room_i/|w_i|) and contributes w_i²·min(μ, room_i/|w_i|). Both are
Σ a_i·min(τ, r_i) = |c|, a concave piecewise-linear equation in τ that is solved exactly by
sorting the breakpoints r_i. When even moving every coordinate to the box falls short, the
step does that (the box's closest approach to the hyperplane).
"""
from __future__ import annotations

import torch
from torch import Tensor

TINY = 1e-12


def water_level(gain: Tensor, cap: Tensor, need: Tensor) -> Tensor:
    """Per row the smallest τ ≥ 0 with Σ_i gain_i·min(τ, cap_i) ≥ need (gain, cap ≥ 0 of
    shape (B, n), need (B,)); +inf where Σ gain_i·cap_i < need."""
    caps, order = cap.sort(dim=1)
    gains = gain.gather(1, order)
    filled = (gains * caps).cumsum(dim=1)           # Σ_{i ≤ j} a_i r_i
    gain_cum = gains.cumsum(dim=1)
    total = gain_cum[:, -1]
    level = filled + caps * (total[:, None] - gain_cum)   # the sum at τ = r_j, rising in j
    first = (level < need[:, None]).sum(dim=1)     # first breakpoint reaching need
    below = (first - 1).clamp_min(0)[:, None]
    has_below = first > 0
    filled_below = torch.where(has_below, filled.gather(1, below).squeeze(1), 0.0)
    gain_below = torch.where(has_below, gain_cum.gather(1, below).squeeze(1), 0.0)
    tau = (need - filled_below) / (total - gain_below).clamp_min(TINY)
    tau = torch.where(first < cap.shape[1], tau, torch.inf)
    return torch.where(need > 0, tau, 0.0)


def min_norm_step(point: Tensor, normal: Tensor, change: Tensor, norm: str, lo: float,
                  hi: float) -> Tensor:
    """The step d (B, n) of smallest ``norm`` ("linf" or "l2") with ⟨normal, d⟩ = change
    and lo ≤ point + d ≤ hi, per row; point and normal (B, n), change (B,)."""
    direction = torch.sign(change)[:, None] * torch.sign(normal)
    room = torch.where(direction > 0, hi - point, point - lo).clamp_min(0.0)
    size = normal.abs()
    if norm == "linf":
        gain, scale, cap = size, torch.ones_like(size), room
    else:
        usable = size > TINY
        gain = torch.where(usable, size * size, 0.0)
        scale = size
        cap = torch.where(usable, room / size.clamp_min(TINY), 0.0)
    tau = water_level(gain, cap, change.abs())
    return direction * scale * torch.minimum(tau[:, None], cap)
