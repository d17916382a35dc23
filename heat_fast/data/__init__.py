"""Datasets, batched on-device augmentation and batch iterators.

:func:`load_dataset` returns a :class:`Dataset` (train/test images float32 in [0, 1],
N×C×H×W, in memory; labels int64; num_classes, in_channels, image_size, mean, std) or, for
``imagenet``, an :class:`ImageFolder` that streams its images from disk; both offer
``train_loader``, ``test_subset`` and ``split_validation``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

from heat_fast.data.augment import Augment, random_crop_flip
from heat_fast.data.base import Dataset, DatasetError
from heat_fast.data.imagenet import ImageFolder
from heat_fast.data.loader import TensorLoader

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet", "synthetic")


def load_dataset(name: str, data_dir: Optional[str] = None, **options) -> Union[Dataset, ImageFolder]:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`).

    ``digits``: scikit-learn's bundled 8×8 digits, fixed split, no options.
    ``cifar10``/``cifar100``: official python-format directory under ``data_dir``.
    ``imagenet``: ``data_dir/train/<class>/`` and ``val/``, streamed; options ``image_size``,
    ``max_per_class``, ``workers`` (decoding processes). ``synthetic``: options ``num_classes``, ``in_channels``,
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
        loader, allowed = (lambda: load_imagenet(data_dir, **options)), (
            "image_size", "max_per_class", "workers")
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


def absolute_data_dir(data_dir: Optional[str]) -> Optional[str]:
    """``data_dir`` with ``~`` expanded, made absolute against the current directory."""
    return None if data_dir is None else str(Path(data_dir).expanduser().absolute())


def load_dataset_for(config: Mapping[str, object], data_dir: Optional[str] = None,
                     workers: int = 0) -> Union[Dataset, ImageFolder]:
    """The dataset a training config names (``dataset``, ``data_dir`` unless ``data_dir`` is
    given, and for imagenet its ``image_size``, default 224). Either folder is resolved the
    same way (:func:`absolute_data_dir`); a loaded dataset's ``extra["path"]`` is the folder
    read, to show the user."""
    name = str(config["dataset"])
    options = ({"image_size": int(config.get("image_size") or 224), "workers": workers}
               if name == "imagenet" else {})
    folder = data_dir or config.get("data_dir")
    return load_dataset(name, absolute_data_dir(str(folder)) if folder else None, **options)


__all__ = ["Augment", "DATASET_NAMES", "Dataset", "DatasetError", "ImageFolder", "TensorLoader",
           "absolute_data_dir", "load_dataset", "load_dataset_for", "random_crop_flip"]
