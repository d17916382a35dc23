"""ImageNet-style class-per-folder image trees: ``data_dir/train/<class>/*`` and ``val/``.

Classes are the sorted sub-folder names of ``train/``; every image is converted to RGB,
resized (shorter side) and center-cropped to ``image_size`` and held in memory, so this
suits subsets (e.g. Imagenette) or ``max_per_class`` samples.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from heat_fast.data.base import Dataset, DatasetError, to_unit_float

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = size / min(img.size)
            w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
            img = img.resize((w, h), Image.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for unreadable files
        raise DatasetError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def _read_split(split_dir: Path, classes: List[str], size: int,
                max_per_class: Optional[int]) -> Tuple[Tensor, Tensor]:
    if not split_dir.is_dir():
        raise DatasetError(f"imagenet: expected the folder {split_dir} with one sub-folder per class")
    images, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (split_dir / cls).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:max_per_class]:
            images.append(_load_image(path, size))
            labels.append(label)
    if not images:
        raise DatasetError(f"imagenet: no images ({', '.join(IMAGE_SUFFIXES)}) found under {split_dir}/<class>/")
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return to_unit_float(batch), torch.tensor(labels, dtype=torch.int64)


def load_imagenet(data_dir: Optional[str], image_size: int = 224,
                  max_per_class: Optional[int] = None) -> Dataset:
    """Class-per-folder ``train/`` and ``val/`` trees as (N, 3, S, S) float32 tensors."""
    if data_dir is None:
        raise DatasetError("imagenet needs --data-dir: a directory with train/<class>/ and val/<class>/ image folders")
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"imagenet: expected {train_dir} with one sub-folder per class (and {root / 'val'})")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetError(f"imagenet: expected at least 2 class folders in {train_dir}, found {len(classes)}")
    train_x, train_y = _read_split(train_dir, classes, image_size, max_per_class)
    test_x, test_y = _read_split(root / "val", classes, image_size, max_per_class)
    return Dataset("imagenet", train_x, train_y, test_x, test_y, len(classes), MEAN, STD,
                   {"path": str(root), "classes": classes})
