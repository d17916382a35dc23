"""Loading ``heat-fast train`` checkpoints and their test data for evaluation, with errors
that say what went wrong (:class:`CheckpointError`) instead of tracebacks."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from heat_fast._files import read_json_lines

CHECKPOINT_FILE = "last.pt"
METRICS_FILE = "metrics.jsonl"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match its recorded architecture."""


@dataclass
class Checkpoint:
    """A loaded model (in eval mode) with its training config and run directory."""

    path: Path
    model: nn.Module
    config: Dict[str, Any]

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def train_seconds_per_epoch(self) -> Optional[float]:
        """Median ``seconds`` over the run's metrics.jsonl epochs (robust to a busy
        machine's spikes; a torn last line is left out), None if unavailable."""
        try:
            records, _torn = read_json_lines(self.run_dir / METRICS_FILE)
            seconds = [float(record["seconds"]) for record in records]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return statistics.median(seconds) if seconds else None


def resolve(path: str | Path) -> Path:
    """A checkpoint file: ``path`` itself, or ``path/last.pt`` for a run directory."""
    path = Path(path)
    candidate = path / CHECKPOINT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise CheckpointError(
            f"no checkpoint at {path} (expected a .pt file or a run directory with {CHECKPOINT_FILE})"
        )
    return candidate


def load(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by ``heat-fast train``; CheckpointError on any failure."""
    from heat_fast.training.checkpoint import CheckpointError as DamagedCheckpoint, load_model

    file = resolve(path)
    try:
        model, config = load_model(file, device)
    except DamagedCheckpoint as error:  # its message names the file and what is wrong
        raise CheckpointError(str(error)) from None
    except Exception as error:  # a corrupt pickle or mismatched weights may raise anything
        raise CheckpointError(f"cannot load checkpoint {file}: {error}") from None
    return Checkpoint(file, model.eval(), dict(config))


def test_data(config: Dict[str, Any], n_examples: Optional[int],
              data_dir: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """The first ``n_examples`` test images and labels of the checkpoint's dataset."""
    from heat_fast.data import load_dataset_for

    if "dataset" not in config:
        raise CheckpointError("the checkpoint config names no dataset")
    return load_dataset_for(config, data_dir).test_subset(n_examples)
