"""The in-memory dataset every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
from torch import Tensor


class DatasetError(ValueError):
    """A dataset is missing, malformed or asked for with bad arguments."""


@dataclass
class Dataset:
    """Train/test tensors plus what a model needs to know about them.

    Images are float32 in [0, 1] with shape (N, C, H, W); labels int64 in [0, num_classes).
    ``mean``/``std`` are per-channel statistics for the model's internal normalization.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])

    def metadata(self) -> Dict[str, object]:
        """Plain-dict metadata: num_classes, in_channels, image_size, mean, std, sizes."""
        return {
            "dataset": self.name, "num_classes": self.num_classes,
            "in_channels": self.in_channels, "image_size": self.image_size,
            "mean": list(self.mean), "std": list(self.std),
            "train_size": int(self.train_x.shape[0]), "test_size": int(self.test_x.shape[0]),
        }


def channel_stats(images: Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) images, rounded to 4 decimals."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return (tuple(round(float(v), 4) for v in flat.mean(1)),
            tuple(round(float(v), 4) for v in flat.std(1)))


def to_unit_float(uint8_images: Tensor) -> Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1]."""
    return uint8_images.to(torch.float32).div_(255.0)
