"""CIFAR-10 / CIFAR-100 from the official python-format directories; nothing is downloaded.

``data_dir`` may be the directory itself (``cifar-10-batches-py`` / ``cifar-100-python``)
or its parent. The pickles are read directly (no md5 check, so real subsets in the same
format load too) by a restricted unpickler (:mod:`heat_fast.data.safe_pickle`) that admits
only what the format holds, so a crafted file raises :class:`DatasetError` instead of
running code.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from heat_fast.data.base import Dataset, DatasetError, to_unit_float
from heat_fast.data.safe_pickle import UnsafePickleError, load_plain_data

_LAYOUT = {
    # name: (directory, train files, test files, label key, classes, mean, std)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100,
                 (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _find_dir(data_dir: Optional[str], dirname: str, name: str) -> Path:
    if data_dir is None:
        raise DatasetError(f"{name} needs --data-dir: a directory holding {dirname}/ "
                           "(the official python-format files); nothing is downloaded")
    root = Path(data_dir).expanduser()
    for candidate in (root, root / dirname):
        if candidate.name == dirname and candidate.is_dir():
            return candidate
    raise DatasetError(f"{name}: expected the official python-format directory {dirname}/ "
                       f"at {root / dirname} (or --data-dir pointing at it), but it does not exist")


def _read_batch(path: Path, label_key: bytes) -> Tuple[Tensor, Tensor]:
    if not path.is_file():
        raise DatasetError(f"missing CIFAR file {path}: expected the official python-format "
                           f"file {path.name} in {path.parent}")
    try:
        with open(path, "rb") as f:
            entry = load_plain_data(f)
    except UnsafePickleError as exc:
        raise DatasetError(f"refusing to load {path}: it holds {exc}, which no CIFAR "
                           "python-format file does (unpickling it could run code); use the "
                           "official files") from None
    except Exception as exc:  # any unpickling failure is a corrupt file for the user
        raise DatasetError(f"corrupt CIFAR file {path}: not a readable pickle "
                           f"({type(exc).__name__}: {exc})") from None
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as exc:  # any unpickling/format failure is a corrupt file for the user
        raise DatasetError(f"corrupt CIFAR file {path}: expected a pickled dict with b'data' "
                           f"(N×3072 uint8) and {label_key!r}; {type(exc).__name__}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DatasetError(f"corrupt CIFAR file {path}: expected data of shape (N, 3072) and N "
                           f"labels, got {data.shape} and {len(labels)} labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _read_split(directory: Path, files: List[str], label_key: bytes) -> Tuple[Tensor, Tensor]:
    parts = [_read_batch(directory / name, label_key) for name in files]
    return (to_unit_float(torch.cat([p[0] for p in parts])), torch.cat([p[1] for p in parts]))


def load_cifar(name: str, data_dir: Optional[str]) -> Dataset:
    """CIFAR-10 or CIFAR-100 as (N, 3, 32, 32) float32 tensors in [0, 1]."""
    dirname, train_files, test_files, label_key, classes, mean, std = _LAYOUT[name]
    directory = _find_dir(data_dir, dirname, name)
    train_x, train_y = _read_split(directory, train_files, label_key)
    test_x, test_y = _read_split(directory, test_files, label_key)
    for split, labels in (("train", train_y), ("test", test_y)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
            raise DatasetError(f"corrupt {name} {split} labels in {directory}: expected labels "
                               f"in [0, {classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return Dataset(name, train_x, train_y, test_x, test_y, classes, mean, std,
                   {"path": str(directory)})
