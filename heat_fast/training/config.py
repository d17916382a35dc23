"""The full configuration of a training run, its defaults and its validation.

Fields left ``None`` are filled by :meth:`TrainConfig.resolved` from the dataset and the
framework (e.g. the model for the dataset, α = ε/4, HE s and m per SPEC §3), so a saved
config always holds concrete values. Data metadata (num_classes, in_channels, image_size,
mean, std) is filled from the loaded dataset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import torch

from heat_fast.data import DATASET_NAMES
from heat_fast.models import MODEL_NAMES
from heat_fast.training import precision
from heat_fast.training.crafting import STARTS
from heat_fast.training.frameworks import FRAMEWORKS
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
# fields a resumed run may change (everything else must match the checkpoint)
RESUMABLE_OVERRIDES = ("epochs", "device", "backend", "data_dir", "eval_examples", "eval_steps",
                       "eval_batch_size", "out", "compile")


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
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Optional[str] = None
    milestones: Optional[List[int]] = None
    gamma: float = 0.1
    eps: Optional[float] = None
    alpha: Optional[float] = None
    steps: Optional[int] = None
    start: Optional[str] = None
    scale: Optional[float] = None
    margin: Optional[float] = None
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
    image_size: Optional[int] = None
    num_classes: Optional[int] = None
    in_channels: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    out: Optional[str] = None

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> "TrainConfig":
        """A validated copy with every framework/dataset default filled in."""
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
            batch_size=_pick(self.batch_size, batch_size), steps=_pick(self.steps, steps),
            start=_pick(self.start, start), scale=_pick(self.scale, scale),
            margin=_pick(self.margin, margin), crop_padding=_pick(self.crop_padding, padding),
            flip=_pick(self.flip, flip), device=device, schedule=schedule,
            milestones=[int(m) for m in _pick(self.milestones, halfway if schedule == "multistep" else [])],
        )
        out.validate()
        fast = precision.resolve(out.device, out.bf16, out.channels_last)
        out.bf16, out.channels_last = fast.bf16, fast.channels_last
        return out

    def validate_names(self) -> None:
        for key, value, valid in (("framework", self.framework, FRAMEWORKS),
                                  ("dataset", self.dataset, DATASET_NAMES)):
            if value not in valid:
                raise ConfigError(f"unknown {key} {value!r}; valid names: {', '.join(valid)}")
        if self.model is not None and self.model not in MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        self.validate_names()
        checks = [
            ("eps", 0 <= self.eps <= 1, "must lie in [0, 1] (pixel units; e.g. 8/255)"),
            ("alpha", self.alpha >= 0, "must be >= 0"),
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
            ("max_steps_per_epoch", self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
             "must be >= 1"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
            ("start", self.start in STARTS, f"must be one of {STARTS}"),
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
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} asked for, but torch sees no CUDA GPU")
