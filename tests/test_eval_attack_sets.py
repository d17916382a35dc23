"""``heat-fast eval``'s attack sets: the AutoAttack-equivalent default, ``--quick``,
``--independent``, named in the table and recorded in eval.json with seconds per attack."""
from __future__ import annotations

import json

import pytest

from heat_fast.cli import eval as eval_cli
from heat_fast.evaluation import QUICK_ATTACKS

from test_eval_cli import make_checkpoint


def title_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if "robust accuracy" in line)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("sets") / "plain", he=False)


def test_quick_set_is_named_and_timed(run, tmp_path, capsys):
    out = tmp_path / "quick"
    assert eval_cli.main([str(run), "--quick", "--n-examples", "16", "--out", str(out),
                          "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| attack set" in printed and "quick (training monitor" in printed
    assert "cumulative" in title_line(printed)
    (ckpt,) = json.loads((out / "eval.json").read_text())["checkpoints"]
    assert list(ckpt["accuracy"]) == list(QUICK_ATTACKS)
    assert set(ckpt["seconds"]) == set(QUICK_ATTACKS) - {"worst-case"}
    assert ckpt["attack_set"].startswith("quick")
    values = [ckpt["accuracy"][name] for name in QUICK_ATTACKS]
    assert values == sorted(values, reverse=True)  # cumulative rows never rise


def test_default_set_is_the_autoattack_equivalent(run, capsys):
    assert eval_cli.main([str(run), "--n-examples", "6", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "AutoAttack-standard equivalent" in printed
    for row in ("apgd-ce", "apgd-t", "fab-t", "square", "worst-case"):
        assert f"| {row} " in printed


def test_independent_rows_are_each_attacks_own(run, tmp_path, capsys):
    out = tmp_path / "independent"
    assert eval_cli.main([str(run), "--independent", "--attacks", "pgd5-ce,pgd5-cw",
                          "--n-examples", "16", "--out", str(out), "--no-progress"]) == 0
    assert "cumulative" not in title_line(capsys.readouterr().out)
    payload = json.loads((out / "eval.json").read_text())
    assert payload["settings"]["independent"] is True
    assert payload["checkpoints"][0]["rows"] == "each attack on every example"


def test_quick_and_attacks_exclude_each_other(run, capsys):
    assert eval_cli.main([str(run), "--quick", "--attacks", "fgsm"]) == 2
    assert "not allowed with" in capsys.readouterr().err
