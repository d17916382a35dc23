"""Issue 13 at the command line: one run per output folder (two processes), runs killed
mid-save, torn metrics lines, strict JSON, a full disk, hostile data folders named by a
checkpoint, and every bad input an exit status 2 (130 for Ctrl-C) with one clear line, no
traceback and nothing existing modified."""
import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import heat_fast.training.run as run_module
from heat_fast._output_folder import LOCK_NAME
from heat_fast.cli import main as heat_fast
from heat_fast.models import build_model
from heat_fast.training.checkpoint import save_checkpoint
from heat_fast.training.trainer import Trainer

QUICK = ["--dataset", "digits", "--max-steps-per-epoch", "2", "--steps", "1", "--batch-size",
         "32", "--eval-examples", "16", "--eval-steps", "1", "--no-progress", "--threads", "1"]
REPO = Path(__file__).resolve().parents[1]


def _train(*argv) -> int:
    return heat_fast(["train", *QUICK, *argv])


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` (hidden ones included), files with a hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "folder" for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-epoch digits run; tests work on copies (:func:`run_copy`)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train("--epochs", "2", "--out", str(out)) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _one_error_line(err: str, prog: str = "heat-fast train") -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"{prog}: error: "), err
    return lines[-1]


# ---- one run per output folder: two processes ------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time, torch
    import heat_fast.training.run as run_module
    from heat_fast.cli import main

    real = torch.save

    def stuck_save(state, f, *args, **kwargs):
        if state["epoch"] == 2 and str(getattr(f, "name", "")).endswith(".tmp"):
            f.write(b"half a checkpoint")
            f.flush()
            print("saving", flush=True)
            time.sleep(600)  # killed here, in the middle of a save
        return real(state, f, *args, **kwargs)

    torch.save = stuck_save
    sys.exit(main(["train", *sys.argv[1:]]))
""")


def test_a_second_run_is_refused_and_a_killed_runs_lock_and_temp_files_are_taken_over(
        tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, *QUICK, "--epochs", "3", "--seed",
                               "5", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert "saving\n" in iter(holder.stdout.readline, "")  # epoch 2 is being saved
        before = _snapshot(out)
        assert f"pid {holder.pid}" in (out / LOCK_NAME).read_text()
        for argv in (["train", *QUICK, "--epochs", "3", "--out", str(out)],
                     ["train", "--resume", "--out", str(out), "--no-progress"],
                     ["train", *QUICK, "--epochs", "3", "--out", str(out), "--overwrite"]):
            assert heat_fast(argv) == 2
            line = _one_error_line(capsys.readouterr().err)
            assert "is in use by another run" in line and f"pid {holder.pid}" in line
        assert heat_fast(["eval", str(out / "last.pt"), "--out", str(out), "--attacks", "fgsm",
                          "--n-examples", "4", "--no-progress", "--threads", "1"]) == 2
        assert "in use by another run" in _one_error_line(capsys.readouterr().err, "heat-fast eval")
        assert heat_fast(["quickstart", "--out", str(out), "--no-progress"]) == 2
        assert "in use by another run" in _one_error_line(capsys.readouterr().err,
                                                          "heat-fast quickstart")
        assert _snapshot(out) == before  # the refused runs changed nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    stale = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert stale and (out / LOCK_NAME).exists()  # what a SIGKILL mid-save leaves
    assert heat_fast(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"was still locked by heat-fast train (pid {holder.pid}" in err and "no longer running" in err
    assert f"removed 1 temporary file(s) that an interrupted save left in {out}: {stale[0]}" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt", "last.pt", "metrics.jsonl", "training_curves.png"]
    assert [m["epoch"] for m in _metrics(out)] == [1, 2, 3]


def test_the_lock_is_released_when_a_run_ends_or_fails(tmp_path, run_copy, capsys):
    assert heat_fast(["train", "--resume", "--out", str(run_copy), "--epochs", "3",
                      "--no-progress"]) == 0
    assert not (run_copy / LOCK_NAME).exists()
    fresh = tmp_path / "fresh"
    assert _train("--epochs", "1", "--lr", "-1", "--out", str(fresh)) == 2
    assert not fresh.exists()  # the failed run removed the folder it had created
    assert heat_fast(["quickstart", "--out", str(run_copy), "--no-progress"]) == 2
    assert "already holds files" in capsys.readouterr().err and not (run_copy / LOCK_NAME).exists()


# ---- metrics.jsonl: fsynced, torn last line, strict JSON -----------------------------------


def test_each_metrics_line_is_fsynced(tmp_path, monkeypatch):
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    assert _train("--epochs", "2", "--out", str(out)) == 0
    assert sum(path.endswith("metrics.jsonl") for path in synced) == 2


def test_resume_drops_a_torn_last_line_with_a_warning(run_copy, capsys):
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "lr": 0.0')  # cut short, no newline
    assert heat_fast(["train", "--resume", "--out", str(run_copy), "--epochs", "3",
                      "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: dropped the last line of" in err and "cut short by an interrupted write" in err
    assert [m["epoch"] for m in _metrics(run_copy)] == [1, 2, 3]


def test_a_damaged_line_before_the_last_blocks_resume_with_a_message(run_copy, capsys):
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{not json", *lines]) + "\n")
    before = _snapshot(run_copy)
    assert heat_fast(["train", "--resume", "--out", str(run_copy), "--epochs", "3",
                      "--no-progress"]) == 2
    assert "line 1 is not a JSON object" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(run_copy) == before


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_and_json_output_are_standard_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train("--epochs", "1", "--eval-examples", "0", "--out", str(out), "--json") == 0
    summary = _strict(capsys.readouterr().out)
    record = _strict((out / "metrics.jsonl").read_text())
    assert record["test_clean_acc"] is None and record["test_pgd_acc"] is None
    assert summary["final"]["test_pgd_acc"] is None and summary["best"]["pgd_acc"] is None


def test_eval_json_writes_null_for_non_finite_numbers(tmp_path):
    from heat_fast.evaluation.eval_json import write_json
    path = write_json(tmp_path / "eval.json", {"a": float("nan"), "b": [1.0, float("-inf")],
                                               "c": {"d": float("inf")}, "device": torch.device("cpu")})
    assert _strict(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": None},
                                         "device": "cpu"}


# ---- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_during_a_save_is_a_clear_error_and_keeps_last_pt(run_copy, monkeypatch, capsys):
    last = (run_copy / "last.pt").read_bytes()

    def no_space(state, f, *args, **kwargs):
        f.write(b"part of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", no_space)
        assert heat_fast(["train", "--resume", "--out", str(run_copy), "--epochs", "3",
                          "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and f"--resume --out {run_copy}" in line
    assert (run_copy / "last.pt").read_bytes() == last
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp") or p.name == LOCK_NAME]
    assert heat_fast(["train", "--resume", "--out", str(run_copy), "--epochs", "3",
                      "--no-progress"]) == 0
    assert [m["epoch"] for m in _metrics(run_copy)] == [1, 2, 3]


# ---- every failure: exit 2, one line, no traceback, nothing modified --------------------------


def _damaged_config(out: Path) -> None:
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"]["eps"] = "abc"
    save_checkpoint(out / "last.pt", state)


class _Payload:
    def __reduce__(self):
        return os.system, ("true",)


def _hostile_checkpoint(out: Path) -> None:
    torch.save({"model": _Payload()}, out / "last.pt")


FAILURES = [
    # (name, argv after the subcommand, how to prepare the run copy, words of the message)
    ("out is a file", ["train", *QUICK, "--out", "{out}/last.pt"], None, "is a file, not a folder"),
    ("out under a file", ["train", *QUICK, "--out", "{out}/last.pt/x"], None, "is a file"),
    ("seed 2**70", ["train", *QUICK, "--seed", str(2**70), "--out", "{out}"], None, "[0, 2**63)"),
    ("eval seed 2**70", ["eval", "{out}", "--seed", str(2**70)], None, "[0, 2**63)"),
    ("lr inf", ["train", *QUICK, "--lr", "inf", "--out", "{out}/new"], None, "lr must be a finite"),
    ("weight decay inf", ["train", *QUICK, "--weight-decay", "inf", "--out", "{out}/new"], None,
     "weight_decay must be a finite"),
    ("scale inf", ["train", *QUICK, "--he", "--scale", "inf", "--out", "{out}/new"], None,
     "scale must be a finite"),
    ("margin nan", ["train", *QUICK, "--he", "--margin", "nan", "--out", "{out}/new"], None,
     "margin must be a finite"),
    ("eps inf", ["train", *QUICK, "--eps", "inf", "--out", "{out}/new"], None, "finite"),
    ("alpha nan", ["train", *QUICK, "--alpha", "nan", "--out", "{out}/new"], None,
     "budget must be >= 0 and finite"),
    ("resume with fewer epochs", ["train", "--resume", "--epochs", "1", "--out", "{out}"], None,
     "--epochs 1 is fewer than the 2 epochs"),
    ("resume with a preset", ["train", "--resume", "--preset", "trades-he", "--out", "{out}"], None,
     "preset"),
    ("non-numeric config in the checkpoint (resume)", ["train", "--resume", "--out", "{out}"],
     _damaged_config, "saved config is damaged: eps = 'abc'"),
    ("non-numeric config in the checkpoint (eval)", ["eval", "{out}"], _damaged_config,
     "saved config is damaged: eps = 'abc'"),
    ("hostile checkpoint (resume)", ["train", "--resume", "--out", "{out}"], _hostile_checkpoint,
     "refusing to load"),
    ("hostile checkpoint (eval)", ["eval", "{out}"], _hostile_checkpoint, "refusing to load"),
]


@pytest.mark.parametrize("name,argv,damage,words", FAILURES, ids=[f[0] for f in FAILURES])
def test_failures_exit_2_with_one_line_and_modify_nothing(name, argv, damage, words, run_copy,
                                                          capsys):
    if damage is not None:
        damage(run_copy)
    before = _snapshot(run_copy.parent)
    argv = [a.replace("{out}", str(run_copy)) for a in argv]
    assert heat_fast([*argv, "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, f"heat-fast {argv[0]}")
    assert words in line, line
    assert "weights_only" not in line and "epochs 3..1" not in line
    assert _snapshot(run_copy.parent) == before


def test_resuming_a_finished_run_says_there_is_nothing_to_train(run_copy, capsys):
    before = _snapshot(run_copy)
    assert heat_fast(["train", "--resume", "--out", str(run_copy), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "nothing to train: the run in" in captured.out and "all its 2 epochs" in captured.out
    assert "done:" not in captured.out and _snapshot(run_copy) == before


def test_an_invalid_backend_variable_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEAT_FAST_BACKEND", "bogus")
    assert _train("--epochs", "1", "--out", str(tmp_path / "run")) == 2
    assert "HEAT_FAST_BACKEND must be" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_an_unwritable_out_is_a_clear_error(tmp_path, monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(Path, "mkdir", denied)
    assert _train("--epochs", "1", "--out", str(tmp_path / "new")) == 2
    assert "cannot create --out" in _one_error_line(capsys.readouterr().err)
    monkeypatch.undo()
    import heat_fast._output_folder as output_folder
    monkeypatch.setattr(output_folder.os, "open", denied)
    assert _train("--epochs", "1", "--out", str(tmp_path)) == 2
    assert "cannot write in --out" in _one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_eval_on_a_missing_gpu_or_backend_says_so(finished, monkeypatch, capsys):
    assert heat_fast(["eval", str(finished), "--device", "cuda", "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, "heat-fast eval")
    assert "no CUDA GPU" in line and "corrupt" not in line
    from heat_fast import triton_kernels
    monkeypatch.setattr(triton_kernels, "interpreting", lambda: False)  # a plain CPU machine
    assert heat_fast(["eval", str(finished), "--backend", "triton", "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, "heat-fast eval")
    assert "--backend triton" in line and "--backend auto" in line


def test_ctrl_c_before_the_first_epoch_does_not_suggest_resume(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    assert _train("--epochs", "2", "--out", str(out)) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "nothing was saved" in err and "Traceback" not in err
    assert not (out / "last.pt").exists() and not (out / LOCK_NAME).exists()
    monkeypatch.setattr(run_module, "load_dataset_for", interrupt)  # while loading the data
    assert _train("--epochs", "2", "--out", str(out)) == 130
    assert "interrupted" in (err := capsys.readouterr().err) and "Traceback" not in err


# ---- data folders: shown, resolved like --data-dir, never run ---------------------------------


def _cifar_folder(root: Path, batch: bytes) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch"):
        (folder / name).write_bytes(batch)
    return root


def _cifar_checkpoint(out: Path, data_dir: str) -> Path:
    model = build_model("small-cnn", 10, False, 3, 32, [0.5] * 3, [0.25] * 3)
    config = dict(framework="pgd-at", he=False, dataset="cifar10", data_dir=data_dir,
                  model="small-cnn", eps=8 / 255, num_classes=10, in_channels=3, image_size=32,
                  mean=[0.5] * 3, std=[0.25] * 3)
    out.mkdir(parents=True)
    save_checkpoint(out / "last.pt", {"model": model.state_dict(), "optimizer": {},
                                     "scheduler": {}, "epoch": 1, "rng": {}, "config": config})
    return out


def test_a_checkpoints_data_dir_is_shown_and_resolved_like_data_dir(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
    _cifar_folder(tmp_path / "cifar", pickle.dumps(batch, 2))
    monkeypatch.chdir(tmp_path)
    ckpt = _cifar_checkpoint(tmp_path / "ckpt", "cifar")  # relative: against the current folder
    assert heat_fast(["eval", str(ckpt), "--attacks", "fgsm", "--n-examples", "2", "--threads",
                      "1", "--no-progress"]) == 0
    shown = f"from {tmp_path / 'cifar' / 'cifar-10-batches-py'} (the checkpoint's data_dir)"
    assert shown in capsys.readouterr().out
    out = tmp_path / "run"
    assert heat_fast(["train", "--dataset", "cifar10", "--data-dir", "cifar", "--model",
                      "small-cnn", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size",
                      "8", "--eval-examples", "2", "--steps", "1", "--eval-steps", "1",
                      "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    assert f"data: cifar10 from {tmp_path / 'cifar' / 'cifar-10-batches-py'} (--data-dir)" in \
        capsys.readouterr().out
    assert torch.load(out / "last.pt", weights_only=True)["config"]["data_dir"] == str(
        tmp_path / "cifar")
    assert heat_fast(["train", "--resume", "--epochs", "2", "--out", str(out),
                      "--no-progress"]) == 0
    assert (f"data: cifar10 from {tmp_path / 'cifar' / 'cifar-10-batches-py'} (the data_dir "
            "saved in the checkpoint)") in capsys.readouterr().out


def test_a_hostile_data_folder_named_by_a_checkpoint_runs_nothing(tmp_path, run_copy, capsys):
    marker = tmp_path / "pwned"
    hostile = _cifar_folder(tmp_path / "hostile",
                            f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())
    ckpt = _cifar_checkpoint(tmp_path / "ckpt", str(hostile))
    assert heat_fast(["eval", str(ckpt), "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err, "heat-fast eval")
    assert "refusing to load" in line and "os.system" in line
    state = torch.load(run_copy / "last.pt", weights_only=True)
    state["config"].update(dataset="cifar10", data_dir=str(hostile))
    save_checkpoint(run_copy / "last.pt", state)
    assert heat_fast(["train", "--resume", "--out", str(run_copy), "--no-progress"]) == 2
    assert "refusing to load" in _one_error_line(capsys.readouterr().err)
    assert _train("--dataset", "cifar10", "--data-dir", str(hostile), "--out",
                  str(tmp_path / "new")) == 2
    assert "refusing to load" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()
