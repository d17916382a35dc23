"""The in-memory dataset most loaders return, and the interface a training run uses.

Both kinds of dataset (:class:`Dataset`, in memory, and the streaming
:class:`~heat_fast.data.imagenet.ImageFolder`) offer ``num_classes``, ``in_channels``,
``image_size``, ``mean``, ``std``, ``train_size``, ``test_size``, :meth:`~Dataset.train_loader`,
:meth:`~Dataset.test_subset` and :meth:`~Dataset.split_validation`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from heat_fast.data.loader import TensorLoader


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

    @property
    def train_size(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.test_x.shape[0])

    def train_loader(self, batch_size: int, generator: torch.Generator, rank: int = 0,
                     world_size: int = 1, device: torch.device = torch.device("cpu")) -> TensorLoader:
        """Shuffled training batches (see :class:`TensorLoader`), the images moved to ``device`` once."""
        return TensorLoader(self.train_x.to(device), self.train_y.to(device), batch_size,
                            shuffle=True, generator=generator, rank=rank, world_size=world_size)

    def test_subset(self, n: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """The first ``n`` test images and labels (all for None)."""
        n = self.test_x.shape[0] if n is None else min(int(n), self.test_x.shape[0])
        return self.test_x[:n], self.test_y[:n]

    def split_validation(self, fraction: float, seed: int) -> Tuple["Dataset", "Dataset"]:
        """Hold out a seeded random ``fraction`` of the training examples (at least one, and
        at least one left to train on): returns (this dataset without them, a dataset whose
        test split is them)."""
        keep, held = validation_indices(self.train_size, fraction, seed)
        rest = dataclasses.replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep])
        validation = dataclasses.replace(rest, test_x=self.train_x[held], test_y=self.train_y[held])
        return rest, validation

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


def validation_indices(n: int, fraction: float, seed: int) -> Tuple[Tensor, Tensor]:
    """(kept, held-out) indices of ``n`` training examples: a seeded random ``fraction``
    held out, each part in its original order. DatasetError if either part would be empty."""
    held_count = round(n * fraction)
    if not 0 < fraction < 1 or held_count < 1 or held_count >= n:
        raise DatasetError(f"val_split {fraction} of {n} training examples leaves "
                           f"{held_count} for validation and {n - held_count} for training; "
                           "both need at least one")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[held_count:].sort().values, order[:held_count].sort().values
