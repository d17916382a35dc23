"""``heat-fast eval`` end to end on tiny digits checkpoints, and its error paths."""
from __future__ import annotations

import json

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
    code = eval_cli.main([str(runs[0]), str(runs[1] / "last.pt"), "--attacks",
                          "pgd5-ce,pgd5-cw,apgd10-dlr", "--eps", "8/255", "--n-examples", "24",
                          "--eps-sweep", "0,0.1", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
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


def test_eps_defaults_to_the_checkpoint_config(runs, capsys):
    from heat_fast.cli import main
    assert main(["eval", str(runs[0]), "--attacks", "fgsm", "--n-examples", "8",
                 "--no-progress"]) == 0
    assert "25.50/255" in capsys.readouterr().out  # eps 0.1 recorded by training


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


@pytest.mark.parametrize("argv", [
    ["--attacks", "pgd20-bogus"], ["--eps", "-0.1"], ["--eps", "eight"],
    ["--eps-sweep", "0,0.1"], ["--n-examples", "0"],
])
def test_bad_arguments_exit_2(argv, runs, capsys):
    with pytest.raises(SystemExit) as info:
        eval_cli.main([str(runs[0])] + argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_autoattack_missing_exits_2(runs, capsys, monkeypatch):
    from heat_fast.attacks import autoattack
    monkeypatch.setattr(autoattack, "PACKAGES", ("heat_fast_no_such_package",))
    assert eval_cli.main([str(runs[0]), "--attacks", "autoattack", "--no-progress"]) == 2
    assert "pip install pyautoattack" in capsys.readouterr().err


def test_quickstart_smoke(tmp_path, capsys):
    from heat_fast.cli import quickstart
    out = tmp_path / "qs"
    code = quickstart.main(["--out", str(out), "--epochs", "1", "--steps-per-epoch", "1",
                            "--n-examples", "6", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("clean", "pgd20-ce", "apgd-ce", "apgd-t", "fab-t", "square", "worst-case",
                "attack set", "train s/epoch"):
        assert f"| {row}" in printed
    assert "pgd-at-he" in printed
    payload = json.loads((out / "eval.json").read_text())
    assert [c["label"] for c in payload["checkpoints"]] == ["pgd-at", "pgd-at-he"]
    assert (out / "eps_sweep.png").is_file()
