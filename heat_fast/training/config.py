"""The full configuration of a training run, its defaults, its validation and config files.

Fields left ``None`` are filled by :meth:`TrainConfig.resolved` from the dataset and the
framework (e.g. the model for the dataset, α = ε/4, HE s and m per SPEC §3, the learning
rate per optimizer), so a saved config always holds concrete values. Data metadata
(num_classes, in_channels, image_size, mean, std) is filled from the loaded dataset.
:func:`read_config_file` reads the same fields from a TOML or YAML file and
:func:`to_toml` writes them back.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from heat_fast.budget import NORMS, BudgetError, check_budget, format_eps, parse_budget
from heat_fast.data import DATASET_NAMES, absolute_data_dir
from heat_fast.models import MODEL_NAMES
from heat_fast.training import precision
from heat_fast.training.crafting import STARTS
from heat_fast.training.frameworks import FRAMEWORKS
from heat_fast.training.objective import WEIGHT_NORM_MODES
from heat_fast.training.schedules import SCHEDULES


class ConfigError(ValueError):
    """A run configuration value is invalid."""


# dataset -> (model, eps, batch size, crop padding, horizontal flip)
DATASET_DEFAULTS = {
    "digits": ("small-cnn", 0.1, 64, 1, False),
    "cifar10": ("preact-resnet18", 8 / 255, 128, 4, True),
    "cifar100": ("preact-resnet18", 8 / 255, 128, 4, True),
    "imagenet": ("resnet50", 4 / 255, 256, 0, True),
    "synthetic": ("small-cnn", 8 / 255, 128, 0, False),
}
# framework -> (HE scale, HE margin, attack steps, start); alpha defaults below
FRAMEWORK_DEFAULTS = {
    "pgd-at": (15.0, 0.2, 10, "uniform"),
    "alp": (20.0, 0.3, 10, "uniform"),
    "trades": (15.0, 0.2, 10, "normal"),
    "free-at": (10.0, 0.2, 4, "none"),
    "fast-at": (15.0, 0.2, 1, "uniform"),
}
# optimizer -> default learning rate
OPTIMIZERS = {"sgd": 0.1, "nesterov": 0.1, "adamw": 1e-3}
# seeds lie in [0, SEED_LIMIT): the seeds derived from them (per epoch, per rank) fit torch's
SEED_LIMIT = 2**63
# fields a resumed run may change (everything else must match the checkpoint)
RESUMABLE_OVERRIDES = ("epochs", "device", "backend", "data_dir", "eval_examples", "eval_steps",
                       "eval_batch_size", "out", "threads", "workers", "tensorboard",
                       "compile")


def _pick(value, default):
    return default if value is None else value


@dataclass
class TrainConfig:
    """Every setting of a ``heat-fast train`` run (ε and α in [0, 1] pixel units)."""

    framework: str = "pgd-at"
    he: bool = False
    preset: Optional[str] = None
    dataset: str = "digits"
    data_dir: Optional[str] = None
    model: Optional[str] = None
    epochs: int = 10
    batch_size: Optional[int] = None
    optimizer: str = "sgd"
    lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Optional[str] = None
    milestones: Optional[List[int]] = None
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0
    norm: str = "linf"
    eps: Optional[float] = None
    alpha: Optional[float] = None
    steps: Optional[int] = None
    start: Optional[str] = None
    scale: Optional[float] = None
    margin: Optional[float] = None
    # the HE head's weight normalization (heat_fast.training.objective.WEIGHT_NORM_MODES)
    weight_norm: str = "differentiable"
    beta: float = 6.0
    alp_weight: float = 0.5
    bn_eval: bool = True
    crop_padding: Optional[int] = None
    flip: Optional[bool] = None
    seed: int = 0
    device: str = "auto"
    backend: str = "auto"
    # speed (heat_fast.training.precision): None = on where the device computes bf16 natively
    bf16: Optional[bool] = None
    channels_last: Optional[bool] = None
    compile: bool = False
    sync_bn: bool = False
    max_steps_per_epoch: Optional[int] = None
    eval_examples: int = 500
    eval_steps: int = 10
    eval_batch_size: int = 256
    val_split: float = 0.0
    threads: Optional[int] = None
    workers: Optional[int] = None
    tensorboard: bool = False
    image_size: Optional[int] = None
    num_classes: Optional[int] = None
    in_channels: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    out: Optional[str] = None

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """The config holding ``values``; :class:`ConfigError` for an unknown key or a value
        of the wrong kind (e.g. a string where a number belongs)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}")
        check_kinds(values)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> "TrainConfig":
        """A validated copy with every framework/dataset default filled in and ``data_dir``
        made absolute (so a checkpoint's folder means the same from any directory)."""
        self.validate_names()
        model, eps, batch_size, padding, flip = DATASET_DEFAULTS[self.dataset]
        scale, margin, steps, start = FRAMEWORK_DEFAULTS[self.framework]
        eps = _pick(self.eps, eps)
        alpha = {"fast-at": 1.25 * eps, "free-at": eps}.get(self.framework, eps / 4)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        schedule = _pick(self.schedule, "cyclic" if self.framework == "fast-at" else "multistep")
        halfway = sorted({m for m in (self.epochs // 2, (3 * self.epochs) // 4) if m >= 1})
        out = dataclasses.replace(
            self, model=_pick(self.model, model), eps=eps, alpha=_pick(self.alpha, alpha),
            lr=_pick(self.lr, OPTIMIZERS.get(self.optimizer, 0.1)),
            batch_size=_pick(self.batch_size, batch_size), steps=_pick(self.steps, steps),
            start=_pick(self.start, start), scale=_pick(self.scale, scale),
            margin=_pick(self.margin, margin), crop_padding=_pick(self.crop_padding, padding),
            flip=_pick(self.flip, flip), device=device, schedule=schedule,
            milestones=[int(m) for m in _pick(self.milestones, halfway if schedule == "multistep" else [])],
            data_dir=absolute_data_dir(self.data_dir),
        )
        out.validate()
        fast = precision.resolve(out.device, out.bf16, out.channels_last)
        out.bf16, out.channels_last = fast.bf16, fast.channels_last
        return out

    def validate_names(self) -> None:
        for key, value, valid in (("framework", self.framework, FRAMEWORKS),
                                  ("dataset", self.dataset, DATASET_NAMES),
                                  ("norm", self.norm, NORMS)):
            if value not in valid:
                raise ConfigError(f"unknown {key} {value!r}; valid names: {', '.join(valid)}")
        if self.model is not None and self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        self.validate_names()
        check_kinds(self.to_dict())
        try:
            check_budget(self.eps, "eps", self.norm)
            check_budget(self.alpha, "alpha", self.norm)
        except BudgetError as error:
            raise ConfigError(str(error)) from None
        checks = [
            ("seed", 0 <= self.seed < SEED_LIMIT, "must be an integer in [0, 2**63)"),
            ("steps", self.steps >= 0, "must be >= 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("momentum", self.momentum >= 0, "must be >= 0"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("gamma", self.gamma > 0, "must be > 0"),
            ("scale", self.scale > 0, "must be > 0"),
            ("margin", self.margin >= 0, "must be >= 0"),
            ("beta", self.beta >= 0, "must be >= 0"),
            ("alp_weight", self.alp_weight >= 0, "must be >= 0"),
            ("crop_padding", self.crop_padding >= 0, "must be >= 0"),
            ("eval_examples", self.eval_examples >= 0, "must be >= 0"),
            ("eval_steps", self.eval_steps >= 0, "must be >= 0"),
            ("eval_batch_size", self.eval_batch_size >= 1, "must be >= 1"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, "must lie in [0, epochs]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must lie in [0, 1)"),
            ("ema", 0 <= self.ema < 1, "must lie in [0, 1) (0 = off; e.g. 0.999)"),
            ("val_split", 0 <= self.val_split < 1, "must lie in [0, 1) (a fraction of the training set)"),
            ("threads", self.threads is None or self.threads >= 1, "must be >= 1"),
            ("workers", self.workers is None or self.workers >= 0, "must be >= 0"),
            ("max_steps_per_epoch", self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
             "must be >= 1"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
            ("start", self.start in STARTS, f"must be one of {STARTS}"),
            ("weight_norm", self.weight_norm in WEIGHT_NORM_MODES,
             f"must be one of {', '.join(WEIGHT_NORM_MODES)}"),
            ("weight_norm", self.he or self.weight_norm == "differentiable",
             "is a mode of the HE head: 'project' needs he (--he)"),
            ("backend", self.backend in ("auto", "reference", "triton", "native"),
             "must be auto, reference, triton or native"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"{name} {requirement}, got {getattr(self, name)!r}")
        if self.framework == "fast-at" and self.steps != 1:
            raise ConfigError(f"fast-at takes one FGSM step, got steps={self.steps}")
        if self.framework == "free-at" and self.steps < 1:
            raise ConfigError(f"free-at needs steps (replays m) >= 1, got {self.steps}")
        check_device(self.device)


CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")
_BUDGET_FIELDS = ("eps", "alpha")
# keys a config file may hold besides the fields: the preset the file builds on
FILE_ONLY_KEYS = ("preset",)


def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def _kind_ok(value, hint) -> bool:
    """Whether ``value`` (from a TOML/YAML file) fits the field type ``hint``."""
    args = typing.get_args(hint)
    if type(None) in args:
        return value is None or _kind_ok(value, next(a for a in args if a is not type(None)))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_kind_ok(v, typing.get_args(hint)[0]) for v in value)
    return False


def check_kinds(values: dict) -> None:
    """Raise :class:`ConfigError` for the first known field of ``values`` whose value is of
    the wrong kind for it (:func:`_describe`) or a non-finite number (NaN, ±inf)."""
    hints = _field_types()
    for name, value in values.items():
        if name not in hints:
            continue
        if not _kind_ok(value, hints[name]):
            raise ConfigError(f"{name} = {value!r} is not a valid {name} "
                              f"(expected {_describe(hints[name])})")
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")


def check_device(name: str) -> torch.device:
    """The torch device ``name`` (cpu, cuda, cuda:N) if this machine has it, else
    :class:`ConfigError` saying what to use instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU on this "
                              "machine: use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} asked for, but torch sees {count} CUDA GPU(s): "
                              f"use cuda:0 to cuda:{count - 1}")
    return device


def _parse_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install 'heat_fast[yaml]'), "
                          "or write the config as TOML") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return {} if values is None else values


def read_config_file(path: str) -> dict:
    """The settings in a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file: TrainConfig
    field names (``batch_size`` or ``batch-size``) and ``preset``; ε and α may be written
    ``"8/255"``. Raises :class:`ConfigError` naming the file and the bad key or value."""
    file = Path(path).expanduser()
    if file.suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"--config {path}: expected a {', '.join(CONFIG_SUFFIXES)} file")
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    raw = _parse_file(file)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {type(raw).__name__}")
    hints, values = _field_types(), {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name in FILE_ONLY_KEYS:
            values[name] = value
            continue
        if name not in hints:
            raise ConfigError(f"{path}: unknown setting {key!r}; valid settings: "
                              f"{', '.join(sorted(hints))}")
        if name in _BUDGET_FIELDS and isinstance(value, str):
            try:
                value = parse_budget(value, name)
            except BudgetError as error:
                raise ConfigError(f"{path}: {error}") from None
        try:
            check_kinds({name: value})
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        values[name] = value
    return values


def _describe(hint) -> str:
    """``int`` → "an integer", ``Optional[List[int]]`` → "a list of an integer, or nothing"."""
    args = typing.get_args(hint)
    if type(None) in args:
        return _describe(next(a for a in args if a is not type(None))) + ", or nothing"
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


def to_toml(values: dict) -> str:
    """``values`` (config fields) as TOML that :func:`read_config_file` reads back; None values
    are left out (TOML has no null) and whole 255ths of ε and α are written as ``"8/255"``."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if key in _BUDGET_FIELDS and "/" in format_eps(value):
            value = format_eps(value)
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else json.dumps(str(value))
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))
