"""Random images and labels of any shape, for throughput runs (nothing to learn)."""
from __future__ import annotations

import torch

from heat_fast.data.base import Dataset, DatasetError

UNIFORM_STD = 12 ** -0.5


def load_synthetic(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                   train_size: int = 1024, test_size: int = 256, seed: int = 0) -> Dataset:
    """Uniform [0, 1) images (N, C, S, S) with uniform labels, drawn from ``seed``."""
    if num_classes < 2 or in_channels < 1 or image_size < 1 or train_size < 1 or test_size < 1:
        raise DatasetError(
            "synthetic needs num_classes >= 2 and positive in_channels, image_size, train_size, "
            f"test_size; got {num_classes}, {in_channels}, {image_size}, {train_size}, {test_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    shape = (in_channels, image_size, image_size)
    images = torch.rand((train_size + test_size,) + shape, generator=gen)
    labels = torch.randint(num_classes, (train_size + test_size,), generator=gen)
    return Dataset("synthetic", images[:train_size], labels[:train_size], images[train_size:],
                   labels[train_size:], num_classes, (0.5,) * in_channels,
                   (UNIFORM_STD,) * in_channels)
