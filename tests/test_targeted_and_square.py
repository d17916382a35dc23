"""APGD-T, FAB-T, Square and FAB's hyperplane projection: against oracles written here from
the published descriptions (an LP and the KKT conditions for the projection, the analytic
boundary distance of linear models, a model with zero gradients for Square)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from heat_fast.attacks import (APGD, APGDT, FAB, Square, build_attack, dlr_targeted_loss,
                               predict)
from heat_fast.attacks.hyperplane import min_norm_step
from heat_fast.attacks.square import margin, nested_squares, window_fraction

from test_attacks import batch, small_net


def _linf_oracle(p: np.ndarray, w: np.ndarray, c: float):
    """min t s.t. |d_i| ≤ t, ⟨w, d⟩ = c, 0 ≤ p + d ≤ 1 (an LP); None if infeasible."""
    n = p.size
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    bounds = [(-p[j], 1 - p[j]) for j in range(n)] + [(0, None)]
    result = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * n),
                     A_eq=np.r_[w, 0.0][None], b_eq=[c], bounds=bounds)
    return result.x[-1] if result.status == 0 else None


def _l2_oracle(p: np.ndarray, w: np.ndarray, c: float):
    """KKT: d = clip(μ·w, −p, 1 − p) with ⟨w, d⟩ = c, μ by bisection; None if infeasible."""
    def excess(mu):
        return float((w * np.clip(mu * w, -p, 1 - p)).sum()) - c
    lo, hi = (0.0, 1e6) if c > 0 else (-1e6, 0.0)
    if (c > 0 and excess(hi) < 0) or (c < 0 and excess(lo) > 0):
        return None
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if excess(mid) > 0 else (mid, hi)
    return np.clip(lo * w, -p, 1 - p)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_step_is_the_smallest_inside_the_box(norm):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(40, 12, generator=g, dtype=torch.float64)
    w = torch.randn(40, 12, generator=g, dtype=torch.float64)
    w[:, :2] = 0  # coordinates that cannot help
    c = torch.randn(40, generator=g, dtype=torch.float64) * torch.linspace(0.01, 3, 40,
                                                                         dtype=torch.float64)
    d = min_norm_step(p, w, c, norm, 0.0, 1.0)
    assert bool(((p + d) >= -1e-12).all()) and bool(((p + d) <= 1 + 1e-12).all())
    feasible = 0
    for i in range(40):
        pi, wi, ci = p[i].numpy(), w[i].numpy(), float(c[i])
        oracle = _linf_oracle(pi, wi, ci) if norm == "linf" else _l2_oracle(pi, wi, ci)
        if oracle is None:  # out of reach: every coordinate moves to the box, toward it
            toward = np.sign(ci) * np.sign(wi)
            full = np.where(toward > 0, 1 - pi, np.where(toward < 0, -pi, 0.0))
            assert np.allclose(d[i].numpy(), full)
            continue
        feasible += 1
        assert float((w[i] * d[i]).sum()) == pytest.approx(ci, abs=1e-9)
        if norm == "linf":
            assert float(d[i].abs().max()) == pytest.approx(oracle, abs=1e-7)
        else:
            assert np.allclose(d[i].numpy(), oracle, atol=1e-8)
    assert 30 <= feasible < 40  # both cases are exercised


def test_targeted_dlr_loss_matches_its_formula():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 7, generator=g)
    y = torch.randint(0, 7, (16,), generator=g)
    t = (y + torch.randint(1, 7, (16,), generator=g)) % 7
    ordered = logits.sort(dim=1, descending=True).values
    rows = torch.arange(16)
    expected = -(logits[rows, y] - logits[rows, t]) / (
        ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)
    assert torch.allclose(dlr_targeted_loss(logits, y, t), expected, atol=1e-6)
    assert torch.allclose(dlr_targeted_loss(5 * logits, y, t), expected, atol=1e-5)
    with pytest.raises(ValueError, match="4 classes"):
        dlr_targeted_loss(logits[:, :3], y % 3, t % 3)


class DecoyLinear(nn.Module):
    """2-D inputs at (0.5, 0.5), class 0 predicted. Class 1 is the runner-up logit but
    constant (unreachable); class 2 is reachable within ε = 0.1 by moving along (+1, −1).
    Untargeted margin losses follow class 1 (zero gradient) and the DLR denominator even
    pushes class 2 away; APGD-T's third-ranked target goes straight for class 2."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, -1.0], [0.0, 0.0]]))
        self.register_buffer("b", torch.tensor([0.0, -0.01, -0.19, -1.0]))

    def forward(self, x):
        return x @ self.w.T + self.b


def test_apgd_t_reaches_a_class_untargeted_margin_attacks_miss():
    model = DecoyLinear()
    x = torch.full((6, 2), 0.5)
    y = torch.zeros(6, dtype=torch.long)
    assert bool((predict(model, x) == y).all())
    for untargeted in (APGD(0.1, steps=20, loss="dlr"), build_attack("pgd20-cw", 0.1)):
        assert bool((predict(model, untargeted(model, x, y)) == y).all())
    x_adv = APGDT(0.1, steps=20, targets=3)(model, x, y)
    assert bool((predict(model, x_adv) == 2).all())
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6


def test_apgd_t_needs_four_classes():
    model = small_net(classes=3)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="4 classes"):
        APGDT(8 / 255, steps=3)(model, x, predict(model, x))


def binary_linear(seed: int = 0, n: int = 24, dim: int = 4):
    """A 2-class linear model with margin z_0 − z_1 = ⟨v, x − 0.5⟩, points near the centre
    of [0, 1]^dim classified 0 by a small margin, and each point's analytic L∞ and L2
    distance to the boundary (margin / ‖v‖₁ and margin / ‖v‖₂; the box does not bind)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g)
    lin = nn.Linear(dim, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([v, torch.zeros(dim)]))
        lin.bias.copy_(torch.tensor([-0.5 * float(v.sum()), 0.0]))
    u = 0.45 + 0.1 * torch.rand(n, dim, generator=g)
    on_boundary = u - ((u - 0.5) @ v)[:, None] * v / v.dot(v)
    margin = (0.02 + 0.03 * torch.rand(n, generator=g)) * v.abs().sum()
    x = on_boundary + margin[:, None] * v / v.dot(v)
    distances = {"linf": margin / v.abs().sum(), "l2": margin / v.norm()}
    return lin, x, torch.zeros(n, dtype=torch.long), distances


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_closest_boundary_point_of_a_linear_model(norm):
    model, x, y, distance = binary_linear()
    d = distance[norm]
    assert bool((predict(model, x) == y).all())
    assert bool(((x - d[:, None]) > 0).all()) and bool(((x + d[:, None]) < 1).all())
    eps = float(d.max())
    x_adv = FAB(eps * 1.1, steps=10, norm=norm)(model, x, y)
    delta = (x_adv - x)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert bool((predict(model, x_adv) != y).all())
    assert bool((size <= 1.06 * d + 1e-6).all())  # FAB overshoots the boundary by η = 1.05
    below = FAB(0.9 * float(d.min()), steps=10, norm=norm)(model, x, y)
    assert torch.equal(below, x)  # nothing within reach: returned unchanged


class Quantized(nn.Module):
    """A model whose input gradient is zero everywhere (it rounds its input first), so
    gradient attacks cannot move; its decision is still easy to cross."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 8) / 8)


def test_square_breaks_a_gradient_masked_model_that_apgd_cannot():
    model = Quantized(small_net())
    x, y = batch(model=model, n=32)
    apgd = APGD(0.1, steps=10, loss="dlr")
    fooled_by_apgd = int((predict(model, apgd(model, x, y)) != y).sum())
    x_adv = Square(0.1, queries=300)(model, x, y)
    fooled = int((predict(model, x_adv) != y).sum())
    assert fooled_by_apgd <= 8  # only its random start moves: every gradient is zero
    assert fooled >= 28
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6


def test_square_linf_converges_to_the_optimal_vertex_of_a_linear_model():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, generator=g)
    x0 = 0.3 + 0.4 * torch.rand(1, 1, 4, 4, generator=g)
    eps = 0.1
    start_margin = 0.8 * eps * float(w.abs().sum())  # the best vertex lowers it 1.25× as far

    class Linear(nn.Module):
        def forward(self, inp):
            margin = (inp - x0).flatten(1) @ w + start_margin
            return torch.stack([margin, torch.zeros_like(margin)], dim=1)

    x = x0.expand(10, -1, -1, -1).clone()
    y = torch.zeros(10, dtype=torch.long)
    x_adv = Square(eps, queries=400)(Linear(), x, y)
    assert bool((predict(Linear(), x_adv) != y).all())


def test_square_skipping_unchanged_candidates_changes_nothing(monkeypatch):
    model = small_net()
    x, y = batch(model=model, n=24)
    attack = Square(8 / 255, queries=150)
    fast = attack(model, x, y)
    calls = []

    def every_row(model_, candidate, shape, rows):
        calls.append(candidate.shape[0])
        return margin(model_, candidate, shape, rows["y"])

    monkeypatch.setattr(Square, "_query", staticmethod(every_row))
    assert torch.equal(attack(model, x, y), fast)
    assert len(calls) == 150


def test_square_window_schedule_and_shape():
    assert [window_fraction(q, 0.8) for q in (0, 10, 11, 50, 51, 5000, 8001)] == [
        0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 128, 0.8 / 512]
    rings = nested_squares(5, 5, torch.device("cpu"))
    assert rings[2, 2] == pytest.approx(1 + 1 / 4 + 1 / 9)
    assert rings[0, 0] == pytest.approx(1 / 9) and rings[1, 3] == pytest.approx(1 / 4 + 1 / 9)


def test_square_rejects_inputs_it_cannot_tile():
    with pytest.raises(ValueError, match="Square needs"):
        Square(0.1, queries=2)(nn.Flatten(), torch.rand(2, 1, 1, 2, 2), torch.zeros(2).long())


@pytest.mark.parametrize("make", [
    lambda: FAB(0.1, clip=None), lambda: FAB(0.1, alpha_max=2.0), lambda: FAB(0.1, eta=0.5),
    lambda: FAB(0.1, targets=0), lambda: Square(0.1, queries=0), lambda: Square(0.1, p_init=0),
    lambda: Square(0.1, clip=None), lambda: APGDT(0.1, targets=0),
    lambda: build_attack("fab", 0.1), lambda: build_attack("square-t", 0.1),
    lambda: build_attack("apgd-t-ce", 0.1), lambda: build_attack("pgd20-t", 0.1),
])
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_fab_evaluation_orders_visit_the_same_points(monkeypatch):
    """FAB classifies first (one forward, then one gradient) once most rows step back, and
    takes gradients first otherwise; both orders must give the same iterates."""
    model = small_net()
    x, y = batch(model=model, n=48)
    attack = FAB(8 / 255, steps=12, targets=3)
    predicting, calls = FAB._settle_predicting, []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return predicting(self, *args, **kwargs)

    monkeypatch.setattr(FAB, "_settle_predicting", counted)
    adaptive = attack(model, x, y)
    assert calls and 0 < int((predict(model, adaptive) != y).sum()) < 48
    monkeypatch.setattr(FAB, "_settle_predicting", FAB._settle)
    assert torch.equal(attack(model, x, y), adaptive)
