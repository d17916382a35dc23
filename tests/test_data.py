"""Datasets: digits, the real CIFAR-10 subset, image folders, synthetic; augmentation; loader."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from heat_fast.data import (Augment, DatasetError, TensorLoader, load_dataset,
                            random_crop_flip)

CIFAR_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
needs_cifar = pytest.mark.skipif(not (CIFAR_MINI / "cifar-10-batches-py").is_dir(),
                                 reason=f"real CIFAR-10 subset not found at {CIFAR_MINI}")


def test_digits_real_images_fixed_stratified_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert a.train_x.min() == 0 and a.train_x.max() == 1
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.bincount(a.test_y, minlength=10).min() >= 35  # stratified: 36 ± 1 per class
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 1, 8)
    assert a.mean[0] == pytest.approx(float(a.train_x.mean()), abs=1e-4)
    # pixel values are the sklearn 0..16 levels divided by 16
    assert torch.allclose(a.train_x * 16, (a.train_x * 16).round())


@needs_cifar
@pytest.mark.parametrize("as_parent", [True, False])
def test_cifar10_reads_the_real_subset(as_parent):
    path = CIFAR_MINI if as_parent else CIFAR_MINI / "cifar-10-batches-py"
    data = load_dataset("cifar10", str(path))
    assert data.train_x.shape == (5050, 3, 32, 32) and data.test_x.shape == (1010, 3, 32, 32)
    assert data.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # official first labels
    assert torch.bincount(data.test_y, minlength=10).tolist() == [104, 91, 100, 103, 91, 87, 113,
                                                                 102, 109, 110]
    assert 0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1
    with open(CIFAR_MINI / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][0]
    assert torch.equal((data.train_x[0] * 255).round().to(torch.uint8).flatten(),
                       torch.from_numpy(np.asarray(raw, dtype=np.uint8)))
    assert data.mean == (0.4914, 0.4822, 0.4465)


def test_cifar_missing_directory_says_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(DatasetError, match="--data-dir"):
        load_dataset("cifar100", None)


@needs_cifar
def test_cifar_missing_and_corrupt_files(tmp_path):
    copy = tmp_path / "cifar-10-batches-py"
    shutil.copytree(CIFAR_MINI / "cifar-10-batches-py", copy)
    (copy / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path))
    (copy / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DatasetError, match="corrupt CIFAR file .*data_batch_3"):
        load_dataset("cifar10", str(tmp_path))


def test_imagenet_folders(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    data = load_dataset("imagenet", str(tmp_path), image_size=16)
    assert data.train_x.shape == (4, 3, 16, 16) and data.test_y.tolist() == [0, 0, 1, 1]
    assert data.extra["classes"] == ["cat", "dog"]
    with pytest.raises(DatasetError, match="train"):
        load_dataset("imagenet", str(tmp_path / "nowhere"))


def test_synthetic_any_shape_and_unknown_names():
    data = load_dataset("synthetic", num_classes=3, in_channels=2, image_size=5, train_size=7,
                        test_size=4, seed=1)
    assert data.train_x.shape == (7, 2, 5, 5) and data.test_x.shape == (4, 2, 5, 5)
    assert int(data.train_y.max()) < 3
    with pytest.raises(DatasetError, match="valid names: digits"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="takes no option"):
        load_dataset("digits", image_size=16)


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 6, 6)
    before = x.clone()
    out = random_crop_flip(x, padding=2, flip=True, generator=gen)
    assert torch.equal(x, before) and out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, dy:dy + 6, dx:dx + 6]))]
        assert matches, f"sample {i} is not a crop of its padded input"
        flips += matches[0][2]
    assert 16 < flips < 48
    again = random_crop_flip(x, 2, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(random_crop_flip(x, 0, False), x)


def test_augment_state_roundtrip():
    aug = Augment(1, True, torch.Generator().manual_seed(3))
    x = torch.rand(8, 1, 4, 4)
    state = aug.state_dict()
    first = aug(x)
    aug.load_state_dict(state)
    assert torch.equal(aug(x), first)


def test_tensor_loader_covers_each_example_once_and_resumes():
    x, y = torch.arange(10.).view(10, 1, 1, 1), torch.arange(10)
    loader = TensorLoader(x, y, 4, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and len(loader) == 3
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    state = loader.state_dict()
    second = [b[1].tolist() for b in loader]
    loader.load_state_dict(state)
    assert [b[1].tolist() for b in loader] == second
