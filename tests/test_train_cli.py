"""``heat-fast train``: a quick digits run, metrics, checkpoints, bit-exact resume, bad input."""
import json

import pytest
import torch

import heat_fast.training.run as run_module
from heat_fast.cli.train import main
from heat_fast.training import load_model

QUICK = ["--dataset", "digits", "--epochs", "2", "--max-steps-per-epoch", "3", "--steps", "2",
         "--batch-size", "32", "--eval-examples", "24", "--eval-steps", "2", "--no-progress"]
METRIC_KEYS = {"epoch", "lr", "loss", "train_clean_acc", "train_adv_acc", "test_clean_acc",
               "test_pgd_acc", "seconds"}


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_quick_run_writes_metrics_and_loadable_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--framework", "pgd-at", "--he", *QUICK, "--out", str(out)]) == 0
    lines = _metrics(out)
    assert [m["epoch"] for m in lines] == [1, 2] and all(METRIC_KEYS <= set(m) for m in lines)
    assert all(0 <= m["test_pgd_acc"] <= m["test_clean_acc"] <= 1 for m in lines)
    assert all(0 <= m["train_adv_acc"] <= 1 and m["lr"] > 0 for m in lines)
    state = torch.load(out / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(state)
    assert state["epoch"] == 2 and {"python", "numpy", "torch", "cuda"} <= set(state["rng"])
    cfg = state["config"]
    assert (cfg["model"], cfg["he"], cfg["framework"], cfg["dataset"], cfg["num_classes"],
            cfg["in_channels"], cfg["image_size"], cfg["eps"]) == (
        "small-cnn", True, "pgd-at", "digits", 10, 1, 8, 0.1)
    model, config = load_model(out / "best.pt")
    assert model.he and config == cfg
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    printed = capsys.readouterr().out
    assert "done: 2 epochs" in printed and "best test PGD accuracy" in printed
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


class _Interrupt:
    """Raise KeyboardInterrupt right after the first last.pt is written (a killed run)."""

    def __init__(self, monkeypatch):
        self.real = run_module.save_checkpoint
        monkeypatch.setattr(run_module, "save_checkpoint", self)

    def __call__(self, path, state):
        self.real(path, state)
        if path.name == "last.pt":
            raise KeyboardInterrupt


@pytest.mark.parametrize("args", [
    ["--framework", "pgd-at", "--he"],
    ["--framework", "free-at", "--he"],
    ["--framework", "trades", "--no-he", "--crop-padding", "1", "--flip"],
])
def test_interrupted_and_resumed_run_matches_bit_for_bit(tmp_path, monkeypatch, args):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, *QUICK, "--out", str(full), "--seed", "3"]) == 0
    with monkeypatch.context() as patch:
        _Interrupt(patch)
        assert main([*args, *QUICK, "--out", str(cut), "--seed", "3"]) == 130
    assert torch.load(cut / "last.pt", weights_only=True)["epoch"] == 1
    assert main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (full, cut))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    strip = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert [strip(m) for m in _metrics(full)] == [strip(m) for m in _metrics(cut)]


@pytest.mark.parametrize("argv,message", [
    (["--framework", "mart"], "invalid choice: 'mart'"),
    (["--model", "vgg"], "invalid choice: 'vgg'"),
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["--eps", "-0.1"], "must be >= 0"),
    (["--eps", "8"], "did you mean 8/255"),
    (["--eps", "abc"], "like 8/255"),
    (["--dataset", "cifar10"], "needs --data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/dir"], "cifar-10-batches-py"),
    (["--steps", "-1"], "steps must be >= 0"),
    (["--framework", "fast-at", "--steps", "3"], "one FGSM step"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "last.pt").exists()


def test_existing_and_corrupt_checkpoints_are_never_touched(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"\x00corrupt checkpoint bytes")
    before = (out / "last.pt").read_bytes()
    assert main(["--resume", "--out", str(out), "--no-progress"]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err
    assert main([*QUICK, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--resume", "--out", str(tmp_path / "empty"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["last.pt"]


def test_resume_rejects_changed_settings_and_keeps_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--epochs", "1", *QUICK[4:], "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    assert main(["--resume", "--out", str(out), "--lr", "0.5", "--no-progress"]) == 2
    assert "lr is 0.1" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    assert main(["--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert [m["epoch"] for m in _metrics(out)] == [1, 2]


def test_preset_defaults_are_overridden_by_flags(tmp_path):
    out = tmp_path / "p"
    assert main(["--preset", "pgd-at-he", "--dataset", "digits", "--model", "small-cnn",
                 "--epochs", "1", "--eps", "0.1", *QUICK[4:], "--out", str(out)]) == 0
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (cfg["preset"], cfg["he"], cfg["scale"], cfg["weight_decay"], cfg["start"],
            cfg["milestones"], cfg["epochs"], cfg["model"]) == (
        "pgd-at-he", True, 15.0, 5e-4, "normal", [74], 1, "small-cnn")


def test_help_documents_units():
    with pytest.raises(SystemExit):
        from heat_fast.cli.train import build_parser
        build_parser().parse_args(["--help"])
    from heat_fast.cli.train import build_parser
    text = build_parser().format_help()
    assert "8/255" in text and "--reference" in text and "--resume" in text
