"""ImageNet-style class-per-folder image trees (``data_dir/train/<class>/*``, ``val/``), streamed.

Classes are the sorted sub-folder names of ``train/``. Only the file paths are held in
memory; images are decoded per batch by DataLoader workers (:mod:`heat_fast.data.stream`),
so the full ImageNet fits. Training images get the Inception-style random-resized crop
(area 8–100%, aspect ratio 3/4–4/3) to ``image_size``; evaluation images are resized so their
shorter side is ``image_size / 0.875`` (256 for 224) and center-cropped. Horizontal flips
run on the device (``--flip``). The validation files are ordered round-robin over the
classes, so the first N test images cover the classes evenly.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from heat_fast.data.base import DatasetError, validation_indices
from heat_fast.data.stream import StreamLoader, decode_all, path_array

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_AREA, CROP_RATIO, CROP_ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 10
EVAL_CROP_FRACTION = 0.875


def _random_resized_box(width: int, height: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop covering 8–100% of the area with aspect ratio in
    [3/4, 4/3]; the largest centered box of a clamped ratio when 10 draws do not fit."""
    area = width * height
    for _ in range(CROP_ATTEMPTS):
        target = area * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (width, round(width / ratio)) if width / height <= ratio else (round(height * ratio), height)
    return (width - w) // 2, (height - h) // 2, w, h


def decode_image(path: str, seed: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB: a random-resized crop drawn from ``seed`` (training) or, for
    a negative seed, the evaluation resize and center crop."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if seed >= 0:
                left, top, w, h = _random_resized_box(img.width, img.height, np.random.default_rng(seed))
                img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
            else:
                short = round(size / EVAL_CROP_FRACTION)
                scale = short / min(img.size)
                w, h = max(short, round(img.width * scale)), max(short, round(img.height * scale))
                img = img.resize((w, h), Image.BILINEAR)
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for unreadable files
        raise DatasetError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class _Decoder:
    """A picklable ``decode(path, seed)`` for DataLoader workers."""

    size: int

    def __call__(self, path: str, seed: int) -> np.ndarray:
        return decode_image(path, seed, self.size)


def _scan(split_dir: Path, classes: List[str], max_per_class: Optional[int],
          round_robin: bool) -> Tuple[np.ndarray, Tensor]:
    if not split_dir.is_dir():
        raise DatasetError(f"imagenet: expected the folder {split_dir} with one sub-folder per class")
    per_class = []
    for cls in classes:
        folder = split_dir / cls
        names = sorted(e.name for e in os.scandir(folder) if e.is_file()
                       and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        per_class.append([str(folder / n) for n in names[:max_per_class]])
    if round_robin:
        order = [(label, files[i]) for i in range(max(map(len, per_class), default=0))
                 for label, files in enumerate(per_class) if i < len(files)]
    else:
        order = [(label, path) for label, files in enumerate(per_class) for path in files]
    if not order:
        raise DatasetError(f"imagenet: no images ({', '.join(IMAGE_SUFFIXES)}) found under {split_dir}/<class>/")
    return path_array([p for _, p in order]), torch.tensor([lab for lab, _ in order], dtype=torch.int64)


@dataclass
class ImageFolder:
    """A class-per-folder image tree streamed from disk (see the module docstring); the same
    interface as :class:`~heat_fast.data.Dataset` for a training run."""

    train_paths: np.ndarray
    train_y: Tensor
    test_paths: np.ndarray
    test_y: Tensor
    num_classes: int
    image_size: int
    workers: int = 0
    name: str = "imagenet"
    mean: Tuple[float, ...] = MEAN
    std: Tuple[float, ...] = STD
    extra: Dict[str, object] = field(default_factory=dict)

    in_channels = 3

    @property
    def train_size(self) -> int:
        return len(self.train_paths)

    @property
    def test_size(self) -> int:
        return len(self.test_paths)

    def train_loader(self, batch_size: int, generator: torch.Generator, rank: int = 0,
                     world_size: int = 1, device: torch.device = torch.device("cpu")) -> StreamLoader:
        """Shuffled batches of random-resized crops, decoded by ``workers`` processes."""
        return StreamLoader(self.train_paths, self.train_y, _Decoder(self.image_size), batch_size,
                            generator, self.workers, rank, world_size,
                            pin_memory=torch.device(device).type == "cuda")

    def test_subset(self, n: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """The first ``n`` test images (center crops), decoded into memory."""
        n = len(self.test_paths) if n is None else min(int(n), len(self.test_paths))
        return decode_all(self.test_paths[:n], self.test_y[:n], _Decoder(self.image_size),
                          self.workers)

    def split_validation(self, fraction: float, seed: int) -> Tuple["ImageFolder", "ImageFolder"]:
        """(this tree without a seeded random ``fraction`` of its training files, a tree whose
        test split is those files)."""
        keep, held = validation_indices(self.train_size, fraction, seed)
        rest = dataclasses.replace(self, train_paths=self.train_paths[keep.numpy()],
                                   train_y=self.train_y[keep])
        validation = dataclasses.replace(rest, test_paths=self.train_paths[held.numpy()],
                                         test_y=self.train_y[held])
        return rest, validation


def load_imagenet(data_dir: Optional[str], image_size: int = 224,
                  max_per_class: Optional[int] = None, workers: int = 0) -> ImageFolder:
    """The file lists of ``train/`` and ``val/`` (at most ``max_per_class`` per class); images
    are decoded by ``workers`` DataLoader processes when batches are drawn."""
    if data_dir is None:
        raise DatasetError("imagenet needs --data-dir: a directory with train/<class>/ and val/<class>/ image folders")
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DatasetError("imagenet needs Pillow to decode images: pip install pillow") from None
    if image_size < 1 or workers < 0:
        raise DatasetError(f"imagenet needs image_size >= 1 and workers >= 0, got {image_size}, {workers}")
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"imagenet: expected {train_dir} with one sub-folder per class (and {root / 'val'})")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetError(f"imagenet: expected at least 2 class folders in {train_dir}, found {len(classes)}")
    train_paths, train_y = _scan(train_dir, classes, max_per_class, round_robin=False)
    test_paths, test_y = _scan(root / "val", classes, max_per_class, round_robin=True)
    return ImageFolder(train_paths, train_y, test_paths, test_y, len(classes), int(image_size),
                       int(workers), extra={"path": str(root), "classes": classes})
