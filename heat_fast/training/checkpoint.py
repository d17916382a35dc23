"""Checkpoints: atomic writes, validated reads, RNG state capture, and model rebuilding.

A training checkpoint is a dict with keys ``model``, ``optimizer``, ``scheduler``,
``epoch`` (epochs completed), ``rng`` (python / numpy / torch / cuda states plus the run's
named generators), ``config`` (the full run config, a plain dict) and extra run state
(``trainer``, ``best``, and ``ema`` — the weight average, with ``--ema``). Files are read
with ``torch.load(weights_only=True)``: a file holding other Python objects is refused
(loading it in full could run code), and the error never suggests doing so.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np
import torch
from torch import nn

from heat_fast._files import atomic_write
from heat_fast.training.config import ConfigError, check_kinds

PathLike = Union[str, os.PathLike]
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config")
MODEL_CONFIG_KEYS = ("model", "num_classes", "he", "in_channels", "image_size", "mean", "std")


class CheckpointError(ValueError):
    """A checkpoint file is corrupt or does not hold what heat_fast expects."""


def save_checkpoint(path: PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same directory, then
    ``os.replace``, so a crash never leaves a half-written checkpoint at ``path``."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_error(path: PathLike, error: Exception) -> CheckpointError:
    """The user's message for ``torch.load(path, weights_only=True)`` raising ``error``:
    torch's reason without its advice to retry with ``weights_only=False`` (the unsafe way)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        reason = next((line for line in lines[1:] if not line.startswith(
            ("Please file an issue", "Check the documentation"))), "unsupported content")
        if "GLOBAL" in reason:
            return CheckpointError(f"refusing to load {path}: it holds Python objects that "
                                   f"heat-fast checkpoints never hold ({reason.rstrip('.')}); "
                                   "it was not written by heat-fast train, or it was altered")
        return CheckpointError(f"corrupt checkpoint {path}: not a torch checkpoint ({reason})")
    reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return CheckpointError(f"corrupt checkpoint {path}: cannot be read by torch.load ({reason})")


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read and validate a training checkpoint (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: expected a file written by heat-fast train "
                                "(DIR/last.pt or DIR/best.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise load_error(path, exc) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a heat_fast checkpoint: expected a dict, got {type(state).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a heat_fast training checkpoint: missing key(s) {missing} "
                              f"(expected {list(REQUIRED_KEYS)})")
    config = state["config"]
    missing = [k for k in MODEL_CONFIG_KEYS
               if not isinstance(config, dict) or config.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: its config lacks {missing}, needed to rebuild the model")
    try:
        check_kinds(config)
    except ConfigError as error:
        raise CheckpointError(f"{path}: its saved config is damaged: {error}") from None
    return state


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, dict]:
    """Rebuild the model described by a checkpoint's config and load its weights: the weight
    average (``ema``) when the run kept one (``--ema``), else ``model``. The HE head gets the
    run's ``weight_norm`` mode (differentiable for checkpoints older than that setting).

    Returns (model in eval mode on ``device``, config dict). Raises FileNotFoundError or
    :class:`CheckpointError` with the reason.
    """
    from heat_fast.models import build_model
    from heat_fast.training.objective import weight_norm_mode

    state = load_checkpoint(path, map_location=device)
    config = state["config"]
    try:
        model = build_model(config["model"], config["num_classes"], config["he"],
                            config["in_channels"], config["image_size"], config["mean"],
                            config["std"],
                            weight_norm_mode(config.get("weight_norm", "differentiable")))
        model.load_state_dict(state["ema"]["model"] if state.get("ema") else state["model"])
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({config['model']}): {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), config


def capture_rng(generators: Dict[str, torch.Generator]) -> dict:
    """Every RNG state a run depends on, as plain data safe for ``weights_only`` loading."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def restore_rng(state: dict, generators: Dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for key, generator in generators.items():
        generator.set_state(state["generators"][key])
