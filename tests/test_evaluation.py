"""Evaluation: robust ≤ clean, worst ≤ each attack, reports, eval.json and the plot."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from heat_fast.evaluation import (CLEAN, WORST, eps_sweep, evaluate,
                                  format_table, parse_attack_list, plot_eps_sweep, write_json)
from heat_fast.evaluation.robustness import _check_in_ball
from heat_fast.attacks import PGD

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
