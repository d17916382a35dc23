"""``heat-fast train``: a quick digits run, metrics, checkpoints, bit-exact resume, bad input,
threads, JSON output, file modes, config files, validation split, EMA, TensorBoard, curves."""
import json
import os
import stat
import sys

import numpy as np
import pytest
import torch

import heat_fast.training.run as run_module
from heat_fast.cli.train import main
from heat_fast.training import load_model

QUICK = ["--dataset", "digits", "--epochs", "2", "--max-steps-per-epoch", "3", "--steps", "2",
         "--batch-size", "32", "--eval-examples", "24", "--eval-steps", "2", "--no-progress",
         "--threads", "1"]
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
    assert printed.splitlines()[0] == "threads 1 (--threads)"
    assert "eps 0.1, alpha 0.025" in printed  # budgets printed the one way (format_eps)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert [m["threads"] for m in lines] == [1, 1] and cfg["threads"] == 1
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


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
    assert main(["--resume", "--out", str(cut), "--no-progress"]) == 0  # reuses --threads 1
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


def _modes(folder):
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_json_prints_only_json_and_every_file_is_0644(tmp_path, capsys):
    out = tmp_path / "run"
    previous = os.umask(0o022)
    try:
        assert main([*QUICK, "--epochs", "1", "--out", str(out), "--json", "--tensorboard"]) == 0
    finally:
        os.umask(previous)
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is exactly one JSON document
    assert summary["epochs"] == 1 and summary["final"]["epoch"] == 1 and summary["threads"] == 1
    assert summary["config"]["threads"] == 1 and summary["best"]["on"] == "test"
    assert "done: 1 epoch in" in captured.err and "heat-fast train:" in captured.err
    modes = _modes(out)
    assert {"last.pt", "best.pt", "metrics.jsonl", "training_curves.png"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_progress_is_plain_lines_with_the_run_eta_when_not_a_terminal(tmp_path, capsys):
    quick = [a for a in QUICK if a != "--no-progress"]
    assert main([*quick, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    line = next(line for line in err.splitlines() if line.startswith("epoch 1 "))
    assert "run " in line and "elapsed, ETA " in line


def test_default_threads_leave_busy_cpus_alone(tmp_path, monkeypatch, capsys):
    from heat_fast import threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus: 1.2)
    quick = [a for a in QUICK if a not in ("--threads", "1")]
    out = tmp_path / "run"
    assert main([*quick, "--epochs", "1", "--out", str(out)]) == 0
    assert "threads 1 (auto: 2 usable CPUs, 1.2 busy" in capsys.readouterr().out
    assert _metrics(out)[0]["threads"] == 1
    assert torch.load(out / "last.pt", weights_only=True)["config"]["threads"] == 1
    assert torch.get_num_threads() >= 1  # restored after the command


def test_resume_with_another_thread_count_warns(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK, "--epochs", "1", "--out", str(out)]) == 0
    assert main(["--resume", "--out", str(out), "--epochs", "2", "--threads", "2",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "used 1 threads" in err and "not bit-identically" in err
    assert [m["threads"] for m in _metrics(out)] == [1, 2]


def test_print_config_is_a_config_file_that_reproduces_the_run(tmp_path, capsys):
    assert main(["--preset", "trades-he", *QUICK, "--model", "small-cnn", "--eps", "0.1",
                 "--out", str(tmp_path / "a"), "--print-config"]) == 0
    text = capsys.readouterr().out
    assert 'preset = "trades-he"' in text and "beta = 6.0" in text and 'alpha = 0.007' in text
    assert not (tmp_path / "a").exists()
    (tmp_path / "run.toml").write_text(text)
    assert main(["--config", str(tmp_path / "run.toml"), "--epochs", "1", "--no-progress"]) == 0
    cfg = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["config"]
    assert (cfg["framework"], cfg["he"], cfg["epochs"], cfg["alpha"], cfg["steps"]) == (
        "trades", True, 1, 0.007, 2)


def test_yaml_config_and_flags_override_it(tmp_path):
    (tmp_path / "c.yaml").write_text("framework: alp\nhe: true\neps: 8/255\nbatch-size: 16\n")
    out = tmp_path / "run"
    assert main(["--config", str(tmp_path / "c.yaml"), *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (cfg["framework"], cfg["he"], cfg["eps"], cfg["batch_size"]) == ("alp", True, 8 / 255, 32)


@pytest.mark.parametrize("name,text,message", [
    ("a.toml", "epoch = 3\n", "unknown setting 'epoch'"),
    ("a.toml", 'epochs = "x"\n', "epochs = 'x' is not a valid epochs (expected an integer)"),
    ("a.toml", "epochs = [\n", "not valid TOML"),
    ("a.toml", 'eps = "8/0"\n', "expected a number like 8/255"),
    ("a.json", "{}", "expected a .toml, .yaml, .yml file"),
    ("missing.toml", None, "no such file"),
])
def test_bad_config_files_exit_2_with_a_message(tmp_path, capsys, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    assert main(["--config", str(tmp_path / name), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_dry_run_checks_and_plans_but_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "plan: epochs 1..2 x 3 steps = 6 steps (PGD-2: 3 passes of small-cnn (0.024M parameters)" in printed
    assert "nothing was trained or written" in printed and not out.exists()


def test_validation_split_chooses_best_pt(tmp_path):
    out = tmp_path / "run"
    assert main([*QUICK, "--epochs", "3", "--val-split", "0.2", "--out", str(out)]) == 0
    records = _metrics(out)
    assert all({"val_clean_acc", "val_pgd_acc", "test_pgd_acc"} <= set(m) for m in records)
    assert all(0 <= m["val_pgd_acc"] <= m["val_clean_acc"] <= 1 for m in records)
    best = torch.load(out / "best.pt", weights_only=True)
    first_max = max(range(3), key=lambda i: (records[i]["val_pgd_acc"], -i))
    assert best["best"]["on"] == "val" and best["epoch"] == first_max + 1
    assert best["best"]["pgd_acc"] == records[first_max]["val_pgd_acc"]


def test_ema_weights_are_evaluated_saved_and_resumed_bit_exactly(tmp_path, monkeypatch):
    args = [*QUICK, "--ema", "0.9"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, "--out", str(full)]) == 0
    state = torch.load(full / "last.pt", weights_only=True)
    assert state["ema"]["updates"] == 6  # one per optimizer step: 2 epochs x 3 steps
    model, _ = load_model(full / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["ema"]["model"][key]), key
    assert any(not torch.equal(state["ema"]["model"][k], state["model"][k]) for k in state["model"])
    with monkeypatch.context() as patch:
        _Interrupt(patch)
        assert main([*args, "--out", str(cut)]) == 130
    assert main(["--resume", "--out", str(cut), "--no-progress"]) == 0
    resumed = torch.load(cut / "last.pt", weights_only=True)
    for key in state["ema"]["model"]:
        assert torch.equal(state["ema"]["model"][key], resumed["ema"]["model"][key]), key


def test_tensorboard_holds_every_metric(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    assert main([*QUICK, "--tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/adv_acc", "test/pgd_acc", "run/threads"} <= set(
        events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("test/pgd_acc")]
    assert logged == [(m["epoch"], pytest.approx(m["test_pgd_acc"])) for m in _metrics(out)]


def test_missing_optional_packages(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    assert main([*QUICK, "--tensorboard", "--out", str(tmp_path / "a")]) == 2
    assert "pip install 'heat_fast[tensorboard]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*QUICK, "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert "training_curves.png was not written" in capsys.readouterr().out
    assert not (tmp_path / "b" / "training_curves.png").exists()


@pytest.mark.parametrize("name,kind,nesterov", [("sgd", torch.optim.SGD, False),
                                                 ("nesterov", torch.optim.SGD, True),
                                                 ("adamw", torch.optim.AdamW, None)])
def test_optimizer_choice(tmp_path, name, kind, nesterov):
    from heat_fast.training.run import build_config, prepare
    config = build_config({"optimizer": name, "out": str(tmp_path), "threads": 1})
    run = prepare(config, dry_run=True)
    optimizer = run.trainer.optimizer
    assert type(optimizer) is kind
    assert optimizer.defaults["lr"] == {"adamw": 1e-3}.get(name, 0.1)
    if nesterov is not None:
        assert optimizer.defaults["nesterov"] is nesterov


def test_l2_threat_model_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*QUICK, "--epochs", "1", "--norm", "l2", "--eps", "2", "--out", str(out)]) == 0
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (cfg["norm"], cfg["eps"], cfg["alpha"]) == ("l2", 2.0, 0.5)
    assert "l2 eps 2, alpha 0.5" in capsys.readouterr().out
    from heat_fast.training.run import build_config, prepare
    run = prepare(build_config({"norm": "l2", "eps": 2.0, "out": str(tmp_path / "d")}), dry_run=True)
    assert run.trainer.framework.norm == "l2"


def test_imagenet_trains_streamed_and_evaluates(tmp_path, capsys):
    from PIL import Image

    from heat_fast.cli.eval import main as eval_main
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for cls in ("a", "b"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (14, 18, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / cls / f"{i}.jpg")
    out = tmp_path / "run"
    assert main(["--dataset", "imagenet", "--data-dir", str(tmp_path / "tree"), "--image-size", "12",
                 "--model", "small-cnn", "--epochs", "1", "--batch-size", "4", "--steps", "1",
                 "--workers", "0", "--eval-steps", "1", "--no-progress", "--threads", "1",
                 "--out", str(out)]) == 0
    cfg = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (cfg["image_size"], cfg["num_classes"], cfg["in_channels"]) == (12, 2, 3)
    assert _metrics(out)[0]["steps"] == 2 and _metrics(out)[0]["eval_examples"] == 4
    capsys.readouterr()
    assert eval_main([str(out), "--attacks", "pgd2-ce", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoints"][0]["n_examples"] == 4
