"""The official AutoAttack through heat_fast, and heat_fast's AutoAttack-equivalent default
measured against it.

The real ``pyautoattack`` (PyPI) runs on a small digits model trained here: the ``autoattack``
attack must reproduce the package's own robust accuracy, and heat_fast's default worst case
must not report more than 0.5 points above it. A stand-in with the git package's API checks
the other calling convention. Both check that the caller's state survives the call.
"""
from __future__ import annotations

import importlib
import os
import sys
import types

import pytest
import torch
from torch import nn

from heat_fast.attacks import build_attack, predict
from heat_fast.data import load_dataset
from heat_fast.evaluation import DEFAULT_ATTACKS, WORST, evaluate

EPS = 0.1
N_TEST = 240


def require_pyautoattack():
    """The pyautoattack module; skip if missing, unless HEAT_FAST_TEST_REQUIRE names it."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError:
        required = os.environ.get("HEAT_FAST_TEST_REQUIRE", "").split(",")
        if "pyautoattack" in required:
            pytest.fail("pyautoattack is required here but not installed "
                        "(pip install --no-deps pyautoattack)")
        pytest.skip("pyautoattack is not installed (pip install --no-deps pyautoattack)")


class DigitsMLP(nn.Module):
    """A small MLP on 8×8 digit images (B, 1, 8, 8), with a BatchNorm so eval mode matters."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def digits():
    """DigitsMLP trained briefly with FGSM adversarial training (ε = 0.1), in eval mode,
    and the first N_TEST test images."""
    data = load_dataset("digits")
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for idx in torch.randperm(data.train_x.shape[0], generator=generator).split(64):
            xb, yb = data.train_x[idx], data.train_y[idx]
            xb = xb.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb), xb)
            x_adv = (xb + EPS * grad.sign()).clamp(0, 1).detach()
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.cat([xb.detach(), x_adv])),
                                        torch.cat([yb, yb])).backward()
            opt.step()
    return model.eval(), data.test_x[:N_TEST], data.test_y[:N_TEST]


def run_package_directly(package, model, x, y):
    adversary = package.AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0,
                                   device=x.device)
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=x.shape[0])
    return predict(model, x_adv) == y


def test_adapter_reproduces_the_package_and_the_default_is_as_strong(digits):
    package = require_pyautoattack()
    model, x, y = digits
    direct = run_package_directly(package, model, x, y)
    x_adv = build_attack("autoattack", EPS)(model, x, y)
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    through_heat_fast = predict(model, x_adv) == y
    assert torch.equal(through_heat_fast, direct)
    official = float(direct.double().mean())
    ours = evaluate(model, x, y, EPS, DEFAULT_ATTACKS, progress=False).accuracy[WORST]
    clean = float((predict(model, x) == y).double().mean())
    assert 0.2 < official < clean - 0.1  # a model where the comparison means something
    assert ours <= official + 0.005


def test_adapter_leaves_grads_rng_and_modes_alone(digits):
    require_pyautoattack()
    model, x, y = digits
    model.train()
    model.net[2].eval()  # a mixed state a blanket model.train() would not restore
    modes = {name: m.training for name, m in model.named_modules()}
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), sentinel):
        p.grad = g
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    x_copy = x.clone()
    try:
        build_attack("autoattack", EPS)(model, x[:16], y[:16])
        assert torch.equal(torch.get_rng_state(), rng)
        assert all(p.grad is g and bool((g == 7).all())
                   for p, g in zip(model.parameters(), sentinel))
        assert all(p.requires_grad for p in model.parameters())
        assert {name: m.training for name, m in model.named_modules()} == modes
        assert torch.equal(x, x_copy)
    finally:
        model.eval()
        for p in model.parameters():
            p.grad = None


class GitStyleAutoAttack:
    """The git package's API: ``verbose=`` and ``device=`` keywords, ``bs=``, returns x_adv.
    Like the package it reseeds the global RNG and backpropagates to the parameters."""

    calls: list = []

    def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True,
                 attacks_to_run=(), version="standard", is_tf_model=False, device="cuda",
                 log_path=None):
        self.model, self.eps, self.seed = model, eps, seed
        self.calls.append({"norm": norm, "verbose": verbose, "device": device,
                           "version": version})

    def run_standard_evaluation(self, x_orig, y_orig, bs=250, return_labels=False,
                                state_path=None):
        self.calls.append({"bs": bs, "n": x_orig.shape[0]})
        torch.manual_seed(self.seed)
        x = x_orig.clone().requires_grad_(True)
        self.model(x).sum().backward()
        return (x_orig + self.eps * x.grad.sign()).clamp(0, 1)


def test_git_package_api_is_called_once_with_its_keywords(monkeypatch):
    fake = types.ModuleType("autoattack")
    fake.AutoAttack = GitStyleAutoAttack
    GitStyleAutoAttack.calls = []
    monkeypatch.setitem(sys.modules, "autoattack", fake)
    model = DigitsMLP().eval()
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    torch.manual_seed(99)
    rng = torch.get_rng_state()
    x_adv = build_attack("autoattack", EPS, seed=5)(model, x, y)
    assert torch.get_rng_state().equal(rng)
    assert all(p.grad is None for p in model.parameters())
    made, ran = GitStyleAutoAttack.calls
    assert made == {"norm": "Linf", "verbose": False, "device": x.device, "version": "standard"}
    assert isinstance(made["device"], torch.device)
    assert ran == {"bs": 12, "n": 12}
    assert float((x_adv - x).abs().max()) == pytest.approx(EPS)
