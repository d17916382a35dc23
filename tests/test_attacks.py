"""Attacks: optimality on linear models, logit-scale (in)variance, monotonicity in
strength, side-effect freedom, reproducibility and argument errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from heat_fast.attacks import (APGD, FAB, FGSM, MIM, PGD, Attack, AutoAttackUnavailableError,
                               Ensemble, build_attack, predict)
from heat_fast.attacks import autoattack as autoattack_module
from heat_fast.attacks.apgd import checkpoints
from heat_fast.evaluation import evaluate

EPS = 8 / 255


class Scaled(nn.Module):
    """A model whose logits are ``scale`` times those of ``inner``."""

    def __init__(self, inner: nn.Module, scale: float):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.scale * self.inner(x)


def small_net(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 64, classes))


def batch(seed: int = 1, n: int = 48, model: nn.Module | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g) if model is None else predict(model.eval(), x)
    return x, y


ALL_NAMES = ["fgsm", "pgd10-ce", "pgd10-cw", "pgd10-dlr", "pgd10-ce-r2", "pgd10-cw-l2",
             "mim5", "apgd20-ce", "apgd20-dlr", "apgd20-ce-l2", "apgd10-t3", "apgd10-t2-l2-r2",
             "fab10-t3", "fab10-t2-l2-r2", "square60", "square60-l2-r2"]


def binary_linear(dim: int = 6, seed: int = 0):
    """A 2-class linear model and points it classifies as 0 with a margin larger than
    any L∞ perturbation of size EPS can remove (so the attack's best point is the optimum)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(dim, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, dim, generator=g))
        lin.bias.zero_()
        x = torch.randn(16, dim, generator=g)
        diff = lin.weight[0] - lin.weight[1]
        margin = x @ diff
        lin.bias[0] = -margin.min() + EPS * diff.abs().sum() + 1.0
    return lin, x, torch.zeros(16, dtype=torch.long), diff


@pytest.mark.parametrize("attack", [
    FGSM(EPS, clip=None), PGD(EPS, steps=10, clip=None), PGD(EPS, steps=10, loss="cw", clip=None),
    MIM(EPS, steps=5, clip=None), APGD(EPS, steps=10, clip=None)], ids=lambda a: type(a).__name__)
def test_linf_attack_reaches_linear_optimum(attack):
    model, x, y, diff = binary_linear()
    x_adv = attack(model, x, y)
    optimum = x - EPS * torch.sign(diff)
    assert torch.allclose(x_adv, optimum, atol=1e-6)
    with torch.no_grad():
        margin = model(x_adv) @ torch.tensor([1.0, -1.0])
        analytic = model(x) @ torch.tensor([1.0, -1.0]) - EPS * diff.abs().sum()
    assert torch.allclose(margin, analytic, atol=1e-5)


class ThreeClassLinear(nn.Module):
    """2-D inputs at (0.5, 0.5), class 0 predicted. Class 1 is reachable within ε = 0.1 by
    moving along (+1, −1); class 2 is unreachable but its weight points the other way, so
    a nearly uniform softmax (tiny logit scale) sends the CE gradient the wrong way."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([[0.0, 0.0], [1.0, -1.0], [-3.0, 3.0]]))
        self.register_buffer("b", torch.tensor([0.0, -0.15, -10.0]))

    def forward(self, x):
        return x @ self.w.T + self.b


def test_margin_attacks_ignore_logit_scale_while_ce_depends_on_it():
    x = torch.full((4, 2), 0.5) + torch.linspace(-0.01, 0.01, 4)[:, None]
    y = torch.zeros(4, dtype=torch.long)
    scales = (2.0 ** -6, 1.0, 2.0 ** 14)
    attacks = {"pgd-ce": PGD(0.1, steps=10, random_start=False),
               "pgd-cw": PGD(0.1, steps=10, loss="cw", random_start=False),
               "pgd-dlr": PGD(0.1, steps=10, loss="dlr", random_start=False),
               "apgd-dlr": APGD(0.1, steps=10, loss="dlr")}
    fooled, outputs = {}, {}
    for scale in scales:
        model = Scaled(ThreeClassLinear(), scale)
        assert bool((predict(model, x) == y).all())
        for name, attack in attacks.items():
            x_adv = attack(model, x, y)
            outputs[name, scale] = x_adv
            fooled[name, scale] = bool((predict(model, x_adv) != y).all())
    for name in ("pgd-cw", "pgd-dlr", "apgd-dlr"):
        for scale in scales:
            assert fooled[name, scale]
            assert torch.equal(outputs[name, scale], outputs[name, 1.0])
    # CE: a tiny scale (raw cosines) points the gradient at the mean of all classes and
    # misses class 1; a huge scale saturates the softmax so the gradient is exactly zero.
    assert fooled["pgd-ce", 1.0]
    assert not fooled["pgd-ce", 2.0 ** -6]
    assert not fooled["pgd-ce", 2.0 ** 14]
    assert torch.equal(outputs["pgd-ce", 2.0 ** 14], x)


def test_worst_case_evaluation_is_not_fooled_by_logit_scale():
    x = torch.full((4, 2), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    names = ["clean", "pgd10-ce", "apgd10-dlr", "worst-case"]
    for scale in (2.0 ** -6, 2.0 ** 14):
        acc = evaluate(Scaled(ThreeClassLinear(), scale), x, y, 0.1, names, progress=False).accuracy
        assert acc["pgd10-ce"] == 1.0 and acc["apgd10-dlr"] == 0.0 and acc["worst-case"] == 0.0


def robust_mask(attack: Attack, model: nn.Module, x, y):
    return predict(model, attack(model, x, y)) == y


@pytest.mark.parametrize("weak,strong", [
    (PGD(EPS, steps=3, loss="ce"), PGD(EPS, steps=12, loss="ce")),
    (PGD(EPS, steps=5, loss="cw"), PGD(EPS, steps=5, loss="cw", restarts=4)),
    (PGD(EPS, steps=3, loss="dlr", restarts=2), PGD(EPS, steps=9, loss="dlr", restarts=3)),
    (APGD(EPS, steps=10), APGD(EPS, steps=10, restarts=3)),
    (MIM(EPS, steps=3), MIM(EPS, steps=8)),
])
def test_stronger_setting_never_reports_higher_accuracy(weak, strong):
    model = small_net()
    x, y = batch(model=model, n=64)
    weak_mask = robust_mask(weak, model, x, y)
    strong_mask = robust_mask(strong, model, x, y)
    assert not bool((strong_mask & ~weak_mask).any())
    assert 0 < int(weak_mask.sum()) < 64  # the comparison is not vacuous


def test_attacks_leave_inputs_modes_grads_and_global_rng_unchanged():
    model = small_net()
    model.train()
    model[1].eval()  # a mixed state that a blanket model.train() would not restore
    modes = {name: m.training for name, m in model.named_modules()}
    seen = []
    model[1].register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    x, y = batch()
    x_copy, y_copy = x.clone(), y.clone()
    rng = torch.get_rng_state()
    for name in ALL_NAMES:
        x_adv = build_attack(name, EPS if "l2" not in name else 0.5)(model, x, y)
        assert x_adv.shape == x.shape and x_adv is not x
    Ensemble([FGSM(EPS), PGD(EPS, steps=3)])(model, x, y)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert seen and not any(seen)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # attacks draw from their own generators


@pytest.mark.parametrize("name", ALL_NAMES)
def test_output_in_ball_and_box_and_reproducible(name):
    model = small_net()
    x, y = batch(model=model)
    eps = 0.5 if "l2" in name else EPS
    a, b = build_attack(name, eps, seed=3), build_attack(name, eps, seed=3)
    x_adv = a(model, x, y)
    assert torch.equal(x_adv, b(model, x, y))
    delta = (x_adv - x).flatten(1)
    size = delta.norm(dim=1) if "l2" in name else delta.abs().amax(dim=1)
    assert bool((size <= eps + 1e-6).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_examples_misclassified_clean_are_returned_unchanged():
    model = small_net()
    x, _ = batch(model=model)
    wrong = (predict(model, x) + 1) % 10
    for name in ("pgd5-ce", "apgd5-dlr", "apgd5-t2", "fab5-t2", "square20"):
        assert torch.equal(build_attack(name, EPS)(model, x, wrong), x)


class Recording(Attack):
    """Returns x unchanged, recording the batch sizes it was called with."""

    def __init__(self):
        self.sizes = []

    def _attack(self, model, x, y):
        self.sizes.append(x.shape[0])
        return x.clone()


def test_ensemble_keeps_first_success_and_attacks_only_robust_examples():
    model = small_net()
    x, y = batch(model=model, n=64)
    first, spy = PGD(EPS, steps=10, loss="cw"), Recording()
    x_first = first(model, x, y)
    fooled_first = predict(model, x_first) != y
    x_adv = Ensemble([first, spy])(model, x, y)
    assert torch.equal(x_adv[fooled_first], x_first[fooled_first])
    assert spy.sizes == [int((~fooled_first).sum())]
    second = APGD(EPS, steps=10, loss="dlr")
    both = predict(model, Ensemble([first, second])(model, x, y)) == y
    assert not bool((both & ~robust_mask(second, model, x, y)).any())
    assert not bool((both & ~(predict(model, x_first) == y)).any())


def test_apgd_checkpoints_follow_the_paper():
    assert sorted(checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("make", [
    lambda: FGSM(-0.1), lambda: PGD(-1e-3, steps=5), lambda: APGD(-EPS), lambda: MIM(-EPS),
    lambda: PGD(EPS, steps=0), lambda: PGD(EPS, steps=5, restarts=2, random_start=False),
    lambda: PGD(EPS, steps=5, loss="hinge"), lambda: APGD(EPS, loss="kl"),
    lambda: PGD(EPS, steps=5, norm="l1"), lambda: build_attack("pgd20-xent", EPS),
    lambda: build_attack("deepfool", EPS), lambda: build_attack("fgsm5", EPS),
    lambda: build_attack("pgd20", float("nan")), lambda: Ensemble([]),
])
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_dlr_needs_three_classes():
    model = small_net(classes=2)
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="3 classes"):
        APGD(EPS, steps=5, loss="dlr")(model, x, torch.zeros(4, dtype=torch.long))


def test_bad_batches_raise():
    model = small_net()
    with pytest.raises(ValueError, match="shape"):
        PGD(EPS, steps=2)(model, torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        PGD(EPS, steps=2)(model, torch.rand(4, 1, 8, 8), torch.zeros(4))


def test_autoattack_missing_names_both_packages(monkeypatch):
    real = autoattack_module.importlib.import_module

    def fake(name, *args):
        if name in autoattack_module.PACKAGES:
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(autoattack_module.importlib, "import_module", fake)
    with pytest.raises(AutoAttackUnavailableError) as info:
        build_attack("autoattack", EPS)
    message = str(info.value)
    assert "'autoattack'" in message and "pip install pyautoattack" in message


@pytest.mark.parametrize("attack", [PGD(EPS, steps=8, loss="cw", random_start=False),
                                    MIM(EPS, steps=6), FAB(EPS, steps=8, targets=3)],
                         ids=["pgd", "mim", "fab-t"])
def test_early_stopping_keeps_rows_aligned(attack):
    """Fooled rows leave the batch at different steps; attacking a permuted batch must
    give the same per-example result, permuted."""
    model = small_net()
    x, y = batch(model=model, n=64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    x_adv = attack(model, x, y)
    fooled = predict(model, x_adv) != y
    assert 0 < int(fooled.sum()) < 64
    assert torch.allclose(attack(model, x[perm], y[perm]), x_adv[perm], atol=1e-6)
