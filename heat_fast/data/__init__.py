"""Datasets as in-memory tensors, batched on-device augmentation and a batch iterator.

:func:`load_dataset` returns a :class:`Dataset` (train/test images float32 in [0, 1],
N×C×H×W; labels int64; num_classes, in_channels, image_size, mean, std).
"""
from __future__ import annotations

from typing import Optional

from heat_fast.data.augment import Augment, random_crop_flip
from heat_fast.data.base import Dataset, DatasetError
from heat_fast.data.loader import TensorLoader

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")


def load_dataset(name: str, data_dir: Optional[str] = None, **options) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`).

    ``digits``: scikit-learn's bundled 8×8 digits, fixed split, no options.
    ``cifar10``/``cifar100``: official python-format directory under ``data_dir``.
    ``imagenet``: ``data_dir/train/<class>/`` and ``val/``; options ``image_size``,
    ``max_per_class``. ``synthetic``: options ``num_classes``, ``in_channels``,
    ``image_size``, ``train_size``, ``test_size``, ``seed``.
    Raises :class:`DatasetError` (a ValueError) saying what was expected where.
    """
    if name == "digits":
        from heat_fast.data.digits import load_digits
        loader, allowed = (lambda: load_digits()), ()
    elif name in ("cifar10", "cifar100"):
        from heat_fast.data.cifar import load_cifar
        loader, allowed = (lambda: load_cifar(name, data_dir)), ()
    elif name == "imagenet":
        from heat_fast.data.imagenet import load_imagenet
        loader, allowed = (lambda: load_imagenet(data_dir, **options)), ("image_size", "max_per_class")
    elif name == "synthetic":
        from heat_fast.data.synthetic import load_synthetic
        loader, allowed = (lambda: load_synthetic(**options)), (
            "num_classes", "in_channels", "image_size", "train_size", "test_size", "seed")
    else:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DatasetError(f"dataset {name!r} takes no option(s) {unknown}; it accepts {list(allowed) or 'none'}")
    return loader()


__all__ = ["Augment", "DATASET_NAMES", "Dataset", "DatasetError", "TensorLoader", "load_dataset",
           "random_crop_flip"]
