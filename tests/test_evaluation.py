"""Evaluation: robust ≤ clean, worst ≤ each attack, the cascade (each attack on the examples
still robust), the ε-sweep's reuse of smaller radii, reports, eval.json and the plot."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from heat_fast.attacks import PGD, Attack, build_attack
from heat_fast.evaluation import (AUTOATTACK_EQUIVALENT, CLEAN, DEFAULT_ATTACKS, QUICK_ATTACKS,
                                  WORST, attack_set_name, eps_sweep, evaluate, format_table,
                                  parse_attack_list, plot_eps_sweep, write_json)
from heat_fast.evaluation.robustness import _check_in_ball

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained():
    """A small CNN fitted briefly to separable random 8×8 images, and a test batch."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (160,), generator=g)
    x = (protos[y] + 0.15 * torch.randn(160, 1, 8, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:120]), y[:120]).backward()
        opt.step()
    return model.eval(), x[120:], y[120:]


def test_robust_never_exceeds_clean_and_worst_is_and_of_all(trained):
    model, x, y = trained
    names = [CLEAN, "fgsm", "pgd10-ce", "pgd10-cw", "mim5", "apgd20-ce", "apgd20-dlr", WORST]
    result = evaluate(model, x, y, 0.15, names, batch_size=16, progress=False)
    masks, acc = result.correct, result.accuracy
    assert result.names == names and result.n == 40
    attacks = [n for n in result.names if n not in (CLEAN, WORST)]
    for name in attacks:
        assert not bool((masks[name] & ~masks[CLEAN]).any())
        assert not bool((masks[WORST] & ~masks[name]).any())
        assert acc[WORST] <= acc[name] <= acc[CLEAN]
    assert torch.equal(masks[WORST], torch.stack([masks[n] for n in [CLEAN] + attacks]).all(0))
    assert 0 < acc[WORST] < acc[CLEAN]  # not vacuous
    json.dumps(result.to_dict())


def test_misclassified_clean_examples_count_as_non_robust(trained):
    model, x, y = trained
    wrong = (y + 1) % 10
    result = evaluate(model, x, wrong, EPS, ["pgd5-ce", WORST], progress=False)
    clean = result.correct[CLEAN]
    assert not bool((result.correct["pgd5-ce"] & ~clean).any())


def test_batching_does_not_change_clean_or_worst_masks(trained):
    model, x, y = trained
    a = evaluate(model, x, y, EPS, [CLEAN, "pgd5-cw", WORST], batch_size=7, progress=False)
    b = evaluate(model, x, y, EPS, [CLEAN, "pgd5-cw", WORST], batch_size=40, progress=False)
    assert torch.equal(a.correct[CLEAN], b.correct[CLEAN])


def test_eps_sweep_starts_at_clean_accuracy(trained):
    model, x, y = trained
    sweep = eps_sweep(model, x, y, [0.0, 4 * EPS], ["pgd5-cw"], progress=False)
    clean = evaluate(model, x, y, 0.0, [CLEAN], progress=False).accuracy[CLEAN]
    assert sweep[0.0] == clean and sweep[4 * EPS] <= clean


def test_attack_list_parsing():
    assert parse_attack_list(["worst-case", "apgd-dlr", " PGD20-CE "]) == [
        CLEAN, "apgd-dlr", "pgd20-ce", WORST]
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attack_list(["clean", "pgd20-bogus"])


def test_ball_check_rejects_points_outside(trained):
    _, x, _ = trained
    with pytest.raises(RuntimeError, match="outside"):
        _check_in_ball("pgd", PGD(EPS, steps=1), x, (x + 2 * EPS).clamp(0, 1))


def test_table_json_and_plot(tmp_path):
    text = format_table({"pgd-at": {"clean": 0.9, "apgd-dlr": 0.41, "note": "x"},
                         "pgd-at-he": {"clean": 0.875}}, ["clean", "apgd-dlr", "note"], "acc")
    lines = text.splitlines()
    assert lines[0].split("|")[2].strip() == "pgd-at" and "87.50" in lines[2]
    assert "41.00" in lines[3] and lines[3].rstrip().endswith("- |")
    path = write_json(tmp_path / "sub" / "eval.json", {"a": 1.5, "device": torch.device("cpu")})
    assert json.loads(path.read_text()) == {"a": 1.5, "device": "cpu"}
    png = plot_eps_sweep({"a": {0.0: 0.9, EPS: 0.5}, "b": {0.0: 0.8, EPS: 0.6}}, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Spy(Attack):
    """Wraps an attack and records the examples (by content) it was asked to attack."""

    def __init__(self, inner: Attack, seen: list):
        self.inner, self.seen = inner, seen
        self.eps, self.norm = inner.eps, inner.norm

    def _attack(self, model, x, y):
        self.seen.append(x.clone())
        return self.inner(model, x, y)


@pytest.fixture
def spied(monkeypatch):
    """evaluate() with every attack wrapped in a Spy; returns {name: [batches]}."""
    from heat_fast.evaluation import robustness
    seen = {}

    def build(name, eps, **kwargs):
        return Spy(build_attack(name, eps, **kwargs), seen.setdefault((name, eps), []))

    monkeypatch.setattr(robustness, "build_attack", build)
    return seen


def _rows_of(x, batches):
    """Indices of x's rows in the concatenated batches (each row of x is distinct)."""
    seen = torch.cat(batches).flatten(1)
    return sorted(int((x.flatten(1) == row).all(1).nonzero()) for row in seen)


def test_cascade_attacks_only_the_examples_still_robust(trained, spied):
    model, x, y = trained
    names = [CLEAN, "pgd5-ce", "pgd5-cw", "apgd10-t3", WORST]
    result = evaluate(model, x, y, 0.15, names, batch_size=16, progress=False)
    masks = result.correct
    previous = masks[CLEAN]
    for name in names[1:-1]:
        attacked = _rows_of(x, spied[name, 0.15])
        assert attacked == previous.nonzero().squeeze(1).tolist()
        assert not bool((masks[name] & ~previous).any())  # cumulative: rows only shrink
        previous = masks[name]
    assert torch.equal(masks[WORST], previous)
    assert 0 < result.accuracy[WORST] < result.accuracy["pgd5-ce"] < result.accuracy[CLEAN]
    assert result.attack_set == "custom" and set(result.seconds) == set(names[:-1])


def test_independent_rows_attack_every_correct_example(trained, spied):
    model, x, y = trained
    names = [CLEAN, "pgd5-ce", "pgd5-cw", WORST]
    result = evaluate(model, x, y, 0.15, names, progress=False, independent=True)
    correct = result.correct[CLEAN].nonzero().squeeze(1).tolist()
    for name in names[1:-1]:
        assert _rows_of(x, spied[name, 0.15]) == correct
    assert torch.equal(result.correct[WORST],
                       result.correct["pgd5-ce"] & result.correct["pgd5-cw"])
    assert result.to_dict()["rows"] == "each attack on every example"


def test_eps_sweep_attacks_only_what_survived_the_smaller_radius(trained, spied):
    model, x, y = trained
    radii = [0.25, 0.0, 0.15, 0.2]
    curve = eps_sweep(model, x, y, radii, ["pgd5-cw"], progress=False)
    assert list(curve) == radii
    assert curve[0.0] >= curve[0.15] >= curve[0.2] >= curve[0.25]
    clean = evaluate(model, x, y, 0.0, [CLEAN], progress=False).accuracy[CLEAN]
    assert curve[0.0] == clean
    for smaller, larger in ((0.15, 0.2), (0.2, 0.25)):
        attacked = len(_rows_of(x, spied["pgd5-cw", larger]))
        assert attacked == round(curve[smaller] * x.shape[0])
    assert curve[0.25] < curve[0.2] < curve[0.15] < clean  # not vacuous


def test_attack_sets_are_named():
    assert attack_set_name(DEFAULT_ATTACKS) == "AutoAttack-standard equivalent"
    assert attack_set_name(["clean", "pgd50-cw", *AUTOATTACK_EQUIVALENT]) == (
        "AutoAttack-standard equivalent")
    assert attack_set_name(QUICK_ATTACKS).startswith("quick")
    assert attack_set_name(["clean", "autoattack", "worst-case"]).startswith("official")
    assert attack_set_name(["apgd-ce", "apgd-t", "fab-t"]) == "custom"
    assert DEFAULT_ATTACKS[-5:-1] == ("apgd-ce", "apgd-t", "fab-t", "square")


def test_attack_view_computes_the_model_and_puts_it_back(trained):
    from heat_fast.evaluation.attack_view import as_layout, attack_view, pick_view
    from heat_fast.training.folding import CraftingConv

    model, x, y = trained
    before = list(model.named_modules())
    strides = [p.stride() for p in model.parameters()]

    def logits_and_grad(inputs):
        inputs = inputs.clone().requires_grad_()
        logits = model(inputs)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), inputs)
        return logits.detach(), grad

    want_logits, want_grad = logits_and_grad(x)
    assert pick_view(model, x) == "channels_last"  # the fastest view that computes the model
    with attack_view(model, "channels_last") as layout:
        assert layout == torch.channels_last  # on a CPU
        assert [type(m) for m in model.modules()].count(CraftingConv) == 1  # BN folded in
        assert isinstance(model[1], nn.Identity)
        got_logits, got_grad = logits_and_grad(as_layout(x, layout))
    # float32 rounding of the folded weights and of a different summation order
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert list(model.named_modules()) == before
    assert [p.stride() for p in model.parameters()] == strides


def test_attack_outputs_are_verified_on_the_model_as_given(trained, monkeypatch):
    """A view that disagrees with the model (class 0 wins everywhere) makes every attack
    think each example already broken; the verification on the model keeps them robust."""
    import contextlib

    from heat_fast.evaluation import robustness

    model, x, y = trained
    keep = y != 0
    x, y = x[keep], y[keep]

    @contextlib.contextmanager
    def lying_view(net, view):
        with torch.no_grad():
            net[-1].bias[0] += 1e4
        try:
            yield torch.preserve_format
        finally:
            with torch.no_grad():
                net[-1].bias[0] -= 1e4

    monkeypatch.setattr(robustness, "attack_view", lying_view)
    result = evaluate(model, x, y, 0.15, [CLEAN, "pgd5-ce", WORST], progress=False)
    assert result.accuracy[CLEAN] > 0.5
    assert torch.equal(result.correct[WORST], result.correct[CLEAN])


class _FlattensWithView(nn.Module):
    """Conv-BN-ReLU-pool, flattened with ``.view`` (fails on NHWC activations)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        f = self.body(x)
        return self.head(f.view(f.shape[0], -1))


class _SharedConv(nn.Module):
    """One conv used twice: once followed by a BN, once not (its BN must not be folded)."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 3, 3, padding=1)
        self.a = nn.Sequential(conv, nn.BatchNorm2d(3), nn.ReLU())
        self.b = nn.Sequential(conv, nn.ReLU())
        self.head = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.head(self.b(self.a(x)).flatten(1))


def _randomized_bn(model):
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


@pytest.mark.parametrize("make,view", [(_FlattensWithView, "folded"), (_SharedConv, "channels_last")])
def test_views_that_would_change_the_model_are_not_used(make, view):
    """A model that cannot run NHWC gets the NCHW folded view; a shared conv is not folded,
    so the view still computes the model; evaluate runs and returns x's layout."""
    from heat_fast.evaluation.attack_view import attack_view, pick_view

    torch.manual_seed(0)
    model = _randomized_bn(make())
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(12, 3, 8, 8, generator=gen), torch.randint(0, 10, (12,), generator=gen)
    assert pick_view(model, x) == view
    with torch.no_grad():
        want = model(x)
        with attack_view(model, "folded"):
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    result = evaluate(model, x, y, 0.1, [CLEAN, "pgd3-ce", WORST], progress=False)
    assert result.accuracy[WORST] <= result.accuracy[CLEAN]
