"""Every ```python block of the README runs as written, and every command of its ```bash
blocks is run (or, for installs and test runs, checked) by a rule below, in README order, in
one working directory, so later commands use what earlier ones wrote.

How each command runs (a command no rule covers fails the test):
- ``heat-fast ...`` / ``python -m heat_fast ...``: in this process through
  ``heat_fast.cli.main``; hours-long ones are shortened by flags appended at the end (argparse
  lets the last value win): the quick start trains 1 epoch of 2 steps and evaluates 12
  images; a ``--preset`` on real data runs as ``--dry-run`` (every check, data loading and
  model building, no training); ``eval`` evaluates 12 images.
- ``torchrun ... -m heat_fast ARGS``: ``ARGS --dry-run`` in this process (the DDP path itself
  runs in tests/test_distributed.py).
- ``python -c CODE``: a subprocess.
- ``pip install ...``: not run (CI's .ci/run installs from scratch); every extra it names must
  exist. ``python -m pytest ...`` and ``python benchmarks/...``: not run here (they are the
  test suite and the benchmarks).
``~/data`` is a tiny CIFAR-10 in the official format; ``mymodels.py`` is the README's block
of that name. Commands using ``autoattack`` expect exit 2 and the install hint when the
package is missing.
"""
import importlib.util
import pathlib
import pickle
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SHORTEN = {"quickstart": ["--epochs", "1", "--steps-per-epoch", "2", "--n-examples", "12"],
           "eval": ["--n-examples", "12"]}


def test_readme_has_examples():
    assert BLOCKS, "the README must show runnable examples"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})


def readme_commands():
    """Each shell command of the README's bash blocks: continuation lines joined, comments
    dropped, ``a && b`` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return [c for c in commands if c]


def _fake_cifar10(root: pathlib.Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, 20))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def _extras() -> set:
    setup = (ROOT / "setup.py").read_text()
    block = re.search(r"extras_require=\{(.*?)\}", setup, flags=re.S).group(1)
    return set(re.findall(r'"([a-z]+)":', block))


def _run_heat_fast(args, capsys):
    from heat_fast.cli import main

    name = args[0]
    args = list(args)
    if name == "train" and "--preset" in args:
        args.append("--dry-run")
    args += SHORTEN.get(name, [])
    redirect = None
    if ">" in args:
        redirect = pathlib.Path(args[args.index(">") + 1])
        args = args[:args.index(">")]
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    if redirect is not None:
        redirect.write_text(out)
    if "autoattack" in " ".join(args) and not any(
            importlib.util.find_spec(p) for p in ("autoattack", "pyautoattack")):
        assert code == 2 and "pip install" in err, (args, err)
    else:
        assert code == 0, (args, err[-2000:])
    return out


def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _fake_cifar10(tmp_path / "data")
    models = [b for b in BLOCKS if b.startswith("# mymodels.py")]
    (tmp_path / "mymodels.py").write_text(models[0])
    extras, ran = _extras(), []
    for words in readme_commands():
        words = [str(pathlib.Path(w).expanduser()) if w.startswith("~") else w for w in words]
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # VAR=value prefixes
            words = words[1:]
        head = words[:3]
        if words[0] == "pip":
            named = {e for w in words for e in re.findall(r"\[([a-z,]+)\]", w) for e in e.split(",")}
            assert named <= extras, f"README names extras {named - extras} that setup.py lacks"
        elif head[:3] == ["python", "-m", "pytest"] or words[:2] == ["python", "benchmarks/report.py"]:
            continue
        elif words[:2] == ["bash", "gpu/check.sh"]:
            continue  # needs a GPU; .ci/run runs its --dry-run
        elif words[0] == "heat-fast":
            ran.append(_run_heat_fast(words[1:], capsys))
        elif head == ["python", "-m", "heat_fast"]:
            ran.append(_run_heat_fast(words[3:], capsys))
        elif words[0] == "torchrun":
            args = words[words.index("heat_fast") + 1:]
            ran.append(_run_heat_fast(args + ["--dry-run"], capsys))
        elif words[:2] == ["python", "-c"]:
            done = subprocess.run([sys.executable, "-c", words[2]], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
        else:
            pytest.fail(f"no rule runs the README command {' '.join(words)!r}; add one here")
    assert len(ran) >= 10
    assert (tmp_path / "runs" / "quickstart" / "eval.json").is_file()
    assert (tmp_path / "runs" / "x" / "training_curves.png").is_file()
