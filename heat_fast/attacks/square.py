"""Square Attack (Andriushchenko et al. 2020): a score-based black-box attack, L∞ or L2.

It needs only the model's logits, never a gradient, so it is the check for gradient
masking. It keeps, per example, the best point found so far (the lowest margin
z_y − max_{i≠y} z_i) and each query proposes a change inside one random s×s window of that
point: L∞ sets the window to x ± ε (one random sign per channel); L2 moves the
perturbation's mass from a second random window into the first, shaped as two opposite
halves of nested squares, and rescales the perturbation to norm ε. A proposal is kept when
it lowers the margin; an example is broken once its margin is ≤ 0 and then leaves the batch.
The window shrinks on AutoAttack's schedule: the fraction p of the image it covers starts at
``p_init`` and halves after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
AutoAttack's standard version: 5000 queries, p_init 0.8, 1 restart. Windows, signs and starts
are drawn per example from a generator seeded with ``seed``; every proposal is projected
onto the ε-ball and the box with the fused :func:`heat_fast.pgd_step`.
Inputs are images (B, C, H, W); (B, H, W) and (B, D) are treated as one-channel images
(B, 1, H, W) and (B, 1, 1, D).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from heat_fast.attacks.core import SearchAttack, check_count, keep_rows, project
from heat_fast.attacks.losses import cw_loss

SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
L2_TINY = 1e-12


def window_fraction(query: int, p_init: float) -> float:
    """The fraction p of the image a window covers at query ``query`` (0-based)."""
    return p_init / 2 ** sum(query > bound for bound in SCHEDULE)


def as_images(x: Tensor) -> Tensor:
    """x (B, C, H, W) as it is; (B, H, W) and (B, D) as one-channel images."""
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x[:, None]
    if x.dim() == 2:
        return x[:, None, None]
    raise ValueError(f"Square needs inputs (B, C, H, W), (B, H, W) or (B, D), got {tuple(x.shape)}")


def margin(model: nn.Module, images: Tensor, shape: torch.Size, y: Tensor) -> Tensor:
    """z_y − max_{i≠y} z_i of the model at ``images`` (viewed as the input ``shape``)."""
    with torch.no_grad():
        return -cw_loss(model(images.reshape((images.shape[0],) + shape[1:])), y)


def random_windows(n: int, height: int, width: int, side: int, generator: torch.Generator,
                   device: torch.device) -> Tuple[Tensor, Tensor]:
    """Row and column indices (n, side) of one random side×side window per example."""
    corner = torch.rand(n, 2, generator=generator, device=device)
    top = (corner[:, 0] * (height - side + 1)).long().clamp_max(height - side)
    left = (corner[:, 1] * (width - side + 1)).long().clamp_max(width - side)
    offsets = torch.arange(side, device=device)
    return top[:, None] + offsets, left[:, None] + offsets


def read_window(t: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """t (B, C, H, W) restricted to each example's window: (B, C, s, s)."""
    batch = torch.arange(t.shape[0], device=t.device)[:, None, None]
    return t[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def write_window(t: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> None:
    """Write values (B, C, s, s) into each example's window of t (B, C, H, W) in place."""
    batch = torch.arange(t.shape[0], device=t.device)[:, None, None]
    t[batch, :, rows[:, :, None], cols[:, None, :]] = values.permute(0, 2, 3, 1).to(t.dtype)


def random_signs(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator, device=device).float() * 2 - 1


def nested_squares(height: int, width: int, device: torch.device) -> Tensor:
    """(height, width): at Chebyshev distance r from the centre, Σ_{k=r}^{K−1} 1/(k+1)²
    with K = max(height, width) // 2 + 1 (the L2 window shape of the paper)."""
    rows = (torch.arange(height, device=device) - height // 2).abs()
    cols = (torch.arange(width, device=device) - width // 2).abs()
    distance = torch.maximum(rows[:, None], cols[None, :])
    weights = 1.0 / torch.arange(1, max(height, width) // 2 + 2, device=device).float() ** 2
    tail = weights.flip(0).cumsum(0).flip(0)
    return tail[distance]


def l2_pattern(side: int, device: torch.device) -> Tensor:
    """The unit-L2 s×s L2 window: nested squares, positive in the top half and negative in
    the bottom half."""
    top = nested_squares(side // 2, side, device)
    bottom = -nested_squares(side - side // 2, side, device)
    pattern = torch.cat([top, bottom])
    return pattern / pattern.norm()


def per_row(t: Tensor) -> Tensor:
    return t.view((-1,) + (1,) * 3)


class Square(SearchAttack):
    """Square Attack at radius ``eps`` (see the module docstring for the parameters)."""

    def __init__(self, eps: float, queries: int = 5000, norm: str = "linf", p_init: float = 0.8,
                 restarts: int = 1, clip: Sequence[float] = (0.0, 1.0), seed: int = 0,
                 backend: str = "auto"):
        super().__init__(eps, norm, restarts, clip, seed, backend)
        self.queries = check_count("queries", queries)
        if not 0.0 < p_init <= 1.0:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        as_images(x)  # inputs it cannot tile fail before any query
        return super()._attack(model, x, y)

    def _search(self, model: nn.Module, x: Tensor, y: Tensor, target: Optional[Tensor],
                restart: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        shape = x.shape
        x = as_images(x)
        found = torch.zeros_like(y, dtype=torch.bool)
        points = x.clone()
        best = self._start(x, generator)
        rows = {"i": torch.arange(y.shape[0], device=y.device), "x": x, "y": y, "best": best,
                "margin": margin(model, best, shape, y)}
        for query in range(self.queries):
            rows = self._record(rows, found, points)
            if rows["i"].numel() == 0:
                break
            candidate = self._propose(rows["x"], rows["best"],
                                      window_fraction(query, self.p_init), generator)
            value = self._query(model, candidate, shape, rows)
            better = value < rows["margin"]
            rows["best"] = torch.where(per_row(better), candidate, rows["best"])
            rows["margin"] = torch.where(better, value, rows["margin"])
        self._record(rows, found, points)
        return found, points.view(shape)

    @staticmethod
    def _record(rows: Dict[str, Tensor], found: Tensor, points: Tensor) -> Dict[str, Tensor]:
        """Record the rows whose best point is misclassified; return the others."""
        broken = rows["margin"] <= 0
        if not bool(broken.any()):
            return rows
        found[rows["i"][broken]] = True
        points[rows["i"][broken]] = rows["best"][broken]
        return keep_rows(~broken, rows)

    @staticmethod
    def _query(model: nn.Module, candidate: Tensor, shape: torch.Size,
               rows: Dict[str, Tensor]) -> Tensor:
        """The margin at each candidate. A candidate equal to its row's best point (an L∞
        window already at the proposed signs) is not sent to the model: its margin is
        known. The outcome is that of querying every row; only the cost is lower."""
        changed = (candidate != rows["best"]).flatten(1).any(dim=1)
        if bool(changed.all()):
            return margin(model, candidate, shape, rows["y"])
        value = rows["margin"].clone()
        moved = changed.nonzero().squeeze(1)
        if moved.numel() > 0:
            value[moved] = margin(model, candidate[moved], shape, rows["y"][moved])
        return value

    def _side(self, fraction: float, x: Tensor) -> int:
        height, width = x.shape[2:]
        side = round(math.sqrt(fraction * height * width))
        if self.norm == "l2":
            side = max(side, 3)
            side += 1 - side % 2
        return max(1, min(side, height, width))

    def _start(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, channels, height, width = x.shape
        if self.norm == "linf":
            stripes = random_signs((n, channels, 1, width), generator, x.device)
            return project(x + self.eps * stripes, x, self.eps, self.norm, self.clip, self.backend)
        side = max(height // 5, 1)
        delta = torch.zeros_like(x, dtype=torch.float32)
        pattern = l2_pattern(side, x.device)
        top0, left0 = (height % side) // 2, (width % side) // 2
        for top in range(top0, height - side + 1, side):
            for left in range(left0, width - side + 1, side):
                signs = random_signs((n, channels, 1, 1), generator, x.device)
                delta[:, :, top:top + side, left:left + side] += pattern * signs
        return self._at_radius(x, delta)

    def _at_radius(self, x: Tensor, delta: Tensor) -> Tensor:
        """x + ε·δ/‖δ‖₂, projected onto the box (and, for rounding, the ball)."""
        scale = self.eps / delta.flatten(1).norm(dim=1).clamp_min(L2_TINY)
        return project(x + per_row(scale) * delta, x, self.eps, self.norm, self.clip,
                       self.backend)

    def _propose(self, x: Tensor, best: Tensor, fraction: float,
                 generator: torch.Generator) -> Tensor:
        n, channels, height, width = x.shape
        side = self._side(fraction, x)
        rows, cols = random_windows(n, height, width, side, generator, x.device)
        signs = random_signs((n, channels, 1, 1), generator, x.device)
        if self.norm == "linf":
            candidate = best.clone()
            write_window(candidate, rows, cols, read_window(x, rows, cols) + self.eps * signs)
            return project(candidate, x, self.eps, self.norm, self.clip, self.backend)
        return self._propose_l2(x, best, side, rows, cols, signs, generator)

    def _propose_l2(self, x: Tensor, best: Tensor, side: int, rows: Tensor, cols: Tensor,
                    signs: Tensor, generator: torch.Generator) -> Tensor:
        n, channels, height, width = x.shape
        delta = (best - x).float()
        rows2, cols2 = random_windows(n, height, width, side, generator, x.device)
        both = torch.zeros_like(delta[:, :1], dtype=torch.bool)
        write_window(both, rows, cols, torch.ones(n, 1, side, side, device=x.device))
        write_window(both, rows2, cols2, torch.ones(n, 1, side, side, device=x.device))
        old = read_window(delta, rows, cols)
        window_norm = old.flatten(2).norm(dim=2)[:, :, None, None]
        image_norm = per_row(delta.flatten(1).norm(dim=1))
        windows_norm = (delta * both).flatten(2).norm(dim=2)[:, :, None, None]
        pattern = l2_pattern(side, x.device)
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        shaped = torch.where(per_row(flip), pattern.T, pattern) * signs
        new = shaped + old / (window_norm + L2_TINY)
        budget = ((self.eps ** 2 - image_norm ** 2).clamp_min(0.0) / channels
                  + windows_norm ** 2).sqrt()
        new = new / new.flatten(2).norm(dim=2)[:, :, None, None].clamp_min(L2_TINY) * budget
        write_window(delta, rows2, cols2, torch.zeros_like(new))
        write_window(delta, rows, cols, new)
        return self._at_radius(x, delta)
