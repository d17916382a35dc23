"""``heat-fast eval`` end to end on tiny digits checkpoints, its error paths, --json,
--norm, --model-factory, per-attack progress; the quickstart; the top-level command."""
from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
from fractions import Fraction

import pytest
import torch

from heat_fast.cli import eval as eval_cli
from heat_fast.data import load_dataset
from heat_fast.models import build_model
from heat_fast.training.checkpoint import save_checkpoint


def make_checkpoint(run_dir, he: bool, weights_he: bool | None = None, seed: int = 0):
    """A ``DIR/last.pt`` in the training format: a small CNN fitted for a few clean steps.

    ``weights_he`` different from ``he`` stores weights of the other head type."""
    data = load_dataset("digits")
    meta = dict(num_classes=10, in_channels=1, image_size=8, mean=list(data.mean),
                std=list(data.std))
    torch.manual_seed(seed)
    model = build_model("small-cnn", he=he if weights_he is None else weights_he, **meta)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for i in range(20):
        xb, yb = data.train_x[i * 64:(i + 1) * 64], data.train_y[i * 64:(i + 1) * 64]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(15 * model(xb) if model.he else model(xb), yb).backward()
        opt.step()
    config = dict(framework="pgd-at", he=he, dataset="digits", data_dir=None, model="small-cnn",
                  eps=0.1, **meta)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run_dir / "last.pt", {"model": model.state_dict(), "optimizer": {},
                                         "scheduler": {}, "epoch": 1, "rng": {}, "config": config})
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "seconds": 1.25}) + "\n")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return make_checkpoint(root / "plain", he=False), make_checkpoint(root / "he", he=True)


def test_eval_two_checkpoints_side_by_side(runs, tmp_path, capsys):
    out = tmp_path / "eval"
    previous = os.umask(0o022)
    try:
        code = eval_cli.main([str(runs[0]), str(runs[1] / "last.pt"), "--attacks",
                              "pgd5-ce,pgd5-cw,apgd10-dlr", "--eps", "8/255", "--n-examples", "24",
                              "--eps-sweep", "0,0.1", "--out", str(out), "--no-progress",
                              "--threads", "1"])
    finally:
        os.umask(previous)
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("threads 1 (--threads)\neval plan: 2 checkpoints\n")
    assert "  attacks: clean, pgd5-ce (6 passes), pgd5-cw (6 passes), apgd10-dlr (11 passes), worst-case" in printed
    header = next(line for line in printed.splitlines() if line.startswith("| robust accuracy"))
    assert "plain" in header and "he" in header
    for row in ("clean", "pgd5-ce", "pgd5-cw", "apgd10-dlr", "worst-case", "train s/epoch"):
        assert f"| {row}" in printed
    payload = json.loads((out / "eval.json").read_text())
    assert payload["settings"]["n_examples"] == 24 and payload["settings"]["seed"] == 0
    for ckpt in payload["checkpoints"]:
        acc = ckpt["accuracy"]
        assert ckpt["eps"] == pytest.approx(8 / 255) and ckpt["n_examples"] == 24
        assert all(acc["worst-case"] <= acc[n] <= acc["clean"] for n in acc)
        assert len(ckpt["correct"]["worst-case"]) == 24
        assert ckpt["train_seconds_per_epoch"] == 1.25
        assert set(ckpt["eps_sweep_worst_case"]) == {"0.0", "0.1"}
    assert (out / "eps_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert payload["settings"]["threads"] == 1
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "eval.json": 0o644, "eps_sweep.png": 0o644}


def test_eps_defaults_to_the_checkpoint_config(runs, capsys):
    from heat_fast.cli import main
    assert main(["eval", str(runs[0]), "--attacks", "fgsm", "--n-examples", "8",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test images, eps 0.1\n" in printed and re.search(r"\| eps +\| +0.1 \|", printed)  # from training


@pytest.mark.parametrize("case", ["missing", "corrupt", "other-architecture", "not-a-dict"])
def test_bad_checkpoints_exit_2_without_traceback(case, runs, tmp_path, capsys):
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "corrupt":
        target = tmp_path / "bad.pt"
        target.write_bytes(b"\x80\x02 definitely not a checkpoint")
    elif case == "not-a-dict":
        target = tmp_path / "list.pt"
        torch.save([1, 2, 3], target)
    else:
        target = make_checkpoint(tmp_path / "mismatch", he=True, weights_he=False)
    code = eval_cli.main([str(runs[0]), str(target), "--n-examples", "4", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("heat-fast eval: error:") and "Traceback" not in captured.err
    assert captured.out == ""  # nothing evaluated: every checkpoint is loaded first


@pytest.mark.parametrize("argv,message", [
    (["--attacks", "pgd20-bogus"], "unknown attack"), (["--eps", "-0.1"], "must be >= 0"),
    (["--eps", "eight"], "like 8/255"), (["--eps", "8"], "did you mean 8/255?"),
    (["--eps-sweep", "0,4", "--out", "x"], "did you mean 4/255?"), (["--eps-sweep", "0,0.1"], "give --out"),
    (["--n-examples", "0"], "integer >= 1"), (["--model-factory", "nomodule:build"], "--dataset"),
    (["--norm", "l1"], "invalid choice: 'l1'"),
])
def test_bad_arguments_exit_2(argv, message, runs, capsys):
    assert eval_cli.main([str(runs[0])] + argv) == 2
    captured = capsys.readouterr()
    assert "error" in captured.err and message in captured.err and captured.out == ""


def test_autoattack_missing_exits_2(runs, capsys, monkeypatch):
    from heat_fast.attacks import autoattack
    monkeypatch.setattr(autoattack, "PACKAGES", ("heat_fast_no_such_package",))
    assert eval_cli.main([str(runs[0]), "--attacks", "autoattack", "--no-progress"]) == 2
    assert "pip install pyautoattack" in capsys.readouterr().err


def test_json_prints_what_eval_json_holds(runs, tmp_path, capsys):
    assert eval_cli.main([str(runs[1]), "--attacks", "pgd3-cw", "--n-examples", "8", "--json",
                          "--out", str(tmp_path), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload == json.loads((tmp_path / "eval.json").read_text())
    assert payload["checkpoints"][0]["accuracy"].keys() == {"clean", "pgd3-cw", "worst-case"}
    assert "eval plan" in captured.err and "| robust accuracy" in captured.err


def test_norm_l2_runs_the_l2_form_of_each_attack(runs, capsys):
    assert eval_cli.main([str(runs[0]), "--norm", "l2", "--eps", "2", "--attacks",
                          "pgd3-ce,fgsm-linf", "--n-examples", "8", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)["checkpoints"][0]
    assert result["accuracy"].keys() == {"clean", "pgd3-ce-l2", "fgsm-linf", "worst-case"}
    assert result["eps"] == 2.0


def test_each_attack_is_named_with_its_eps_in_the_progress(runs):
    from heat_fast import progress
    from heat_fast.evaluation import evaluate
    from heat_fast.evaluation.checkpoints import load, test_data

    ckpt = load(runs[0])
    x, y = test_data(ckpt.config, 8)
    stream = io.StringIO()
    with progress.Tracker(8 * (1 + 4 + 4), mode="lines", stream=stream, interval=0):
        evaluate(ckpt.model, x, y, 0.1, ["clean", "pgd3-ce", "pgd3-cw", "worst-case"], batch_size=4)
    lines = stream.getvalue().splitlines()
    # Attacks run in turn, each on the examples still robust, in batches of 4.
    details = [line.split("  run ")[0].split(" | ")[1].rsplit(" ", 2)[0] for line in lines]
    assert details[0] == "clean"
    assert set(details) <= {"clean", "pgd3-ce eps 0.1", "pgd3-cw eps 0.1"}
    assert details == sorted(details, key=["clean", "pgd3-ce eps 0.1", "pgd3-cw eps 0.1"].index)
    run = [float(line.split("  run ")[1].split("%")[0]) for line in lines]
    assert run == sorted(run) and 0 < run[-1] <= 100
    assert "\r" not in stream.getvalue()


def test_model_factory_evaluates_a_plain_state_dict(tmp_path, monkeypatch, capsys):
    (tmp_path / "zoo.py").write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zoo", raising=False)
    import zoo
    torch.manual_seed(0)
    model = zoo.build()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "ddp.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    for spec in ("zoo:build", str(tmp_path / "zoo.py") + ":build"):
        assert eval_cli.main(["plain.pt", "ddp.pt", "--model-factory", spec, "--dataset", "digits",
                              "--eps", "0.1", "--attacks", "pgd3-cw", "--n-examples", "16",
                              "--json", "--no-progress"]) == 0
        reports = json.loads(capsys.readouterr().out)["checkpoints"]
        assert [r["label"] for r in reports] == ["plain", "ddp"]
        assert reports[0]["correct"] == reports[1]["correct"]  # the same weights either way
        assert reports[0]["config"]["model"] == spec and reports[0]["eps"] == 0.1
    x, y = load_dataset("digits").test_subset(16)
    assert reports[0]["accuracy"]["clean"] == pytest.approx(float((model(x).argmax(1) == y).float().mean()))


@pytest.mark.parametrize("spec,weights,message", [
    ("zoo:nothing", "plain.pt", "has no function nothing"),
    ("nowhere:build", "plain.pt", "cannot import nowhere"),
    ("zoo:build", "missing.pt", "no weights file"),
    ("zoo:build", "list.pt", "expected a state dict"),
    ("zoo:wide", "plain.pt", "do not fit the model"),
])
def test_model_factory_errors_exit_2(tmp_path, monkeypatch, capsys, spec, weights, message):
    (tmp_path / "zoo.py").write_text(
        "from torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "def wide():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 20))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "zoo", raising=False)  # an earlier test's zoo.py
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict(),
               tmp_path / "plain.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    assert eval_cli.main([weights, "--model-factory", spec, "--dataset", "digits", "--eps", "0.1",
                          "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_quickstart_smoke(tmp_path, capsys):
    from heat_fast.cli import quickstart
    out = tmp_path / "qs"
    code = quickstart.main(["--out", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                            "--n-examples", "6", "--no-progress", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("clean", "pgd20-ce", "apgd-ce", "apgd-t", "fab-t", "square", "worst-case",
                "attack set", "train s/epoch"):
        assert f"| {row}" in printed
    assert "pgd-at-he" in printed
    payload = json.loads((out / "eval.json").read_text())
    assert [c["label"] for c in payload["checkpoints"]] == ["pgd-at", "pgd-at-he"]
    assert (out / "eps_sweep.png").is_file()
    assert (out / "pgd-at-he" / "training_curves.png").is_file()
    assert quickstart.main(["--out", str(out), "--epochs", "1", "--no-progress"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert quickstart.main(["--out", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                            "--n-examples", "6", "--no-progress", "--threads", "1",
                            "--overwrite", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["threads"] == 1 and [t["final"]["epoch"] for t in summary["trainings"]] == [1, 1]
    assert [c["label"] for c in summary["evaluation"]["checkpoints"]] == ["pgd-at", "pgd-at-he"]


def test_heat_fast_without_arguments_exits_2_and_has_a_version(capsys):
    from heat_fast.cli import main
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: heat-fast")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("heat-fast 0.1.0 (torch ")


def test_presets_lists_every_value_of_every_preset(capsys):
    import tomllib

    from heat_fast.cli import main
    from heat_fast.training.presets import PRESETS
    assert main(["presets"]) == 0
    listed = tomllib.loads(capsys.readouterr().out)
    assert listed.keys() == PRESETS.keys()
    for name, values in PRESETS.items():
        assert listed[name].keys() == values.keys()
        for key, value in values.items():
            shown = listed[name][key]
            assert (float(Fraction(shown)) if isinstance(shown, str) and "/" in shown else shown) == (
                pytest.approx(value) if isinstance(value, float) else value), (name, key)
    assert main(["presets", "fast-at", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"fast-at": PRESETS["fast-at"]}
    assert main(["presets", "nope"]) == 2
