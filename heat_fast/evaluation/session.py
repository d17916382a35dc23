"""Evaluating several checkpoints side by side: the table, eval.json and the ε-sweep plot."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

import heat_fast
from heat_fast.budget import format_eps
from heat_fast.evaluation import checkpoints
from heat_fast.evaluation.eval_json import write_json
from heat_fast.evaluation.plot import plot_eps_sweep
from heat_fast.evaluation.report import Cell, format_table
from heat_fast.evaluation.robustness import DEFAULT_ATTACKS, EvalResult, eps_sweep, evaluate

SECONDS_ROW = "train s/epoch"
ATTACK_SET_ROW = "attack set"


@dataclass
class CheckpointReport:
    """One checkpoint's evaluation: its label, config, result and optional ε-sweep."""

    label: str
    path: str
    config: Dict[str, Any]
    result: EvalResult
    seconds_per_epoch: Optional[float]
    sweep: Dict[float, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "path": self.path, "config": self.config,
                "train_seconds_per_epoch": self.seconds_per_epoch,
                "eps_sweep_worst_case": {str(e): a for e, a in self.sweep.items()},
                **self.result.to_dict()}


@dataclass
class Settings:
    """What an evaluation run was asked to do (``eps`` None: each checkpoint's own)."""

    attacks: Sequence[str] = DEFAULT_ATTACKS
    eps: Optional[float] = None
    n_examples: Optional[int] = 1000
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    data_dir: Optional[str] = None
    eps_sweep: Sequence[float] = ()
    sweep_attacks: Optional[Sequence[str]] = None
    progress: bool = True
    independent: bool = False
    threads: Optional[int] = None


def _labels(paths: Sequence[Path]) -> List[str]:
    names = [p.parent.name if p.name == checkpoints.CHECKPOINT_FILE else p.stem for p in paths]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def evaluate_checkpoints(paths: Sequence[str | Path | checkpoints.Checkpoint],
                         settings: Settings) -> List[CheckpointReport]:
    """Load every checkpoint first (so a bad one fails fast), then evaluate each; an entry
    may also be an already loaded :class:`~heat_fast.evaluation.Checkpoint`."""
    loaded = [p if isinstance(p, checkpoints.Checkpoint) else checkpoints.load(p, settings.device)
              for p in paths]
    reports = []
    for label, ckpt in zip(_labels([c.path for c in loaded]), loaded):
        eps = settings.eps if settings.eps is not None else ckpt.config.get("eps")
        if eps is None:
            raise checkpoints.CheckpointError(f"{ckpt.path} records no eps; pass --eps")
        x, y = checkpoints.test_data(ckpt.config, settings.n_examples, settings.data_dir)
        common = dict(batch_size=settings.batch_size, seed=settings.seed,
                      backend=settings.backend, progress=settings.progress,
                      independent=settings.independent)
        result = evaluate(ckpt.model, x, y, float(eps), settings.attacks, desc=label, **common)
        sweep_attacks = settings.sweep_attacks or settings.attacks
        sweep = (eps_sweep(ckpt.model, x, y, settings.eps_sweep, sweep_attacks, **common)
                 if settings.eps_sweep else {})
        reports.append(CheckpointReport(label, str(ckpt.path), ckpt.config, result,
                                        ckpt.train_seconds_per_epoch(), sweep))
    return reports


def table(reports: Sequence[CheckpointReport]) -> str:
    """Robust accuracy (%) per attack, one column per checkpoint, plus the settings rows
    (among them the attack set, so readers know what the worst case compares to)."""
    rows = list(dict.fromkeys(n for r in reports for n in r.result.names))
    columns: Dict[str, Dict[str, Cell]] = {}
    for r in reports:
        column: Dict[str, Cell] = dict(r.result.accuracy)
        column["framework"] = f"{r.config.get('framework', '?')}{'+HE' if r.config.get('he') else ''}"
        column["eps"] = format_eps(r.result.eps)
        column["n examples"] = str(r.result.n)
        column[ATTACK_SET_ROW] = r.result.attack_set
        column[SECONDS_ROW] = None if r.seconds_per_epoch is None else f"{r.seconds_per_epoch:.2f}"
        columns[r.label] = column
    independent = any(r.result.independent for r in reports)
    title = "robust accuracy (%)" + ("" if independent else ", cumulative")
    return format_table(columns, ["framework"] + rows + ["eps", "n examples", ATTACK_SET_ROW,
                                                         SECONDS_ROW], title=title)


def eval_payload(reports: Sequence[CheckpointReport], settings: Settings) -> dict:
    """What eval.json holds: the settings, versions and every checkpoint's numbers."""
    return {
        "settings": {**vars(settings), "attacks": list(settings.attacks),
                     "eps_sweep": list(settings.eps_sweep),
                     "sweep_attacks": list(settings.sweep_attacks or settings.attacks)},
        "versions": {"heat_fast": heat_fast.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "checkpoints": [r.to_dict() for r in reports],
    }


def write_outputs(reports: Sequence[CheckpointReport], settings: Settings, out: Path) -> List[Path]:
    """eval.json (every number and the settings) and, with a sweep, eps_sweep.png."""
    written = [write_json(Path(out) / "eval.json", eval_payload(reports, settings))]
    if any(r.sweep for r in reports):
        written.append(plot_eps_sweep({r.label: r.sweep for r in reports},
                                      Path(out) / "eps_sweep.png"))
    return written
