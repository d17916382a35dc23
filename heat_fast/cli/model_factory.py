"""Evaluating any ``nn.Module``: ``--model-factory module:function`` plus a plain state dict.

``module`` is an importable module name (the current directory is searched first, as
``python -m`` does) or a path to a ``.py`` file; ``function()`` takes no arguments and
returns the model, which must take images in [0, 1] (normalization inside) and return
logits. The weights file may be a plain state dict, a dict holding one under ``state_dict``
or ``model``, or a heat-fast checkpoint; a ``module.`` prefix (DDP) is stripped.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Dict

import torch
from torch import nn

from heat_fast.evaluation import Checkpoint, CheckpointError


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """The function named by ``module:function`` or ``path/to/file.py:function``."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name:
        raise CheckpointError(f"--model-factory {spec!r}: expected module:function, e.g. mymodels:build")
    try:
        if module_name.endswith(".py"):
            location = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if location is None or not Path(module_name).is_file():
                raise ImportError(f"no file {module_name}")
            module = importlib.util.module_from_spec(location)
            location.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything on import
        raise CheckpointError(f"--model-factory {spec!r}: cannot import {module_name} "
                              f"({type(exc).__name__}: {exc})") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise CheckpointError(f"--model-factory {spec!r}: {module_name} has no function {function_name}")
    return factory


def _state_dict(loaded: object, path: Path) -> Dict[str, torch.Tensor]:
    if isinstance(loaded, dict) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), or a dict holding "
                              "one under 'state_dict' or 'model'")
    if all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def load_with_factory(path: str, spec: str, config: dict, device: str = "cpu") -> Checkpoint:
    """The model ``spec`` builds, with the weights in ``path``, in eval mode on ``device``;
    ``config`` (dataset, data_dir, eps, ...) stands in for a training config."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"no weights file at {file}")
    model = load_factory(spec)()
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"--model-factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    try:
        loaded = torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise CheckpointError(f"cannot read {file} with torch.load ({type(exc).__name__})") from None
    try:
        model.load_state_dict(_state_dict(loaded, file))
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: the weights do not fit the model {spec} builds: "
                              f"{str(exc).splitlines()[0]}") from None
    return Checkpoint(file, model.to(device).eval(), dict(config, model=spec))
