"""Datasets: digits, the real CIFAR-10 subset, image folders, synthetic; augmentation; loader."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from heat_fast.data import (Augment, DatasetError, TensorLoader, load_dataset,
                            random_crop_flip)

CIFAR_MINI = next((folder / "shared" / "data" / "cifar10-mini"
                   for folder in Path(__file__).resolve().parents
                   if (folder / "shared" / "data" / "cifar10-mini").is_dir()),
                  Path("shared/data/cifar10-mini"))
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


def _image_tree(root, sizes=((20, 30), (33, 17), (24, 24)), per_class=(3, 2)):
    """train/ and val/ class folders of random RGB images of the given sizes."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for cls in ("cat", "dog", "eel"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                h, w = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png")


def test_imagenet_streams_from_file_paths(tmp_path):
    from PIL import Image
    _image_tree(tmp_path)
    data = load_dataset("imagenet", str(tmp_path), image_size=16)
    assert (data.train_size, data.test_size, data.num_classes, data.in_channels) == (9, 6, 3, 3)
    assert data.train_paths.dtype.kind == "S"  # paths only, as one byte array
    assert data.extra["classes"] == ["cat", "dog", "eel"]
    x, y = data.test_subset(4)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 1, 2, 0]  # round-robin over the classes
    # evaluation crop: shorter side to round(16 / 0.875) = 18, then the center 16x16
    with Image.open(tmp_path / "val" / "cat" / "0.png") as img:
        img = img.convert("RGB").resize((27, 18), Image.BILINEAR)
        expected = np.asarray(img.crop((5, 1, 21, 17)), dtype=np.float32) / 255
    assert torch.allclose(x[0], torch.from_numpy(expected).permute(2, 0, 1))
    with pytest.raises(DatasetError, match="train"):
        load_dataset("imagenet", str(tmp_path / "nowhere"))


def test_imagenet_batches_do_not_depend_on_the_workers_and_resume(tmp_path):
    _image_tree(tmp_path)
    data = {w: load_dataset("imagenet", str(tmp_path), image_size=12, workers=w) for w in (0, 2)}
    epochs = {}
    for workers, d in data.items():
        loader = d.train_loader(4, torch.Generator().manual_seed(5))
        epochs[workers] = [list(loader), list(loader)]
    for a, b in zip(epochs[0], epochs[2]):
        assert len(a) == 3 and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                   for (xa, ya), (xb, yb) in zip(a, b))
    first, second = epochs[0]
    assert not torch.equal(first[0][0], second[0][0])  # a new order and new crops each pass
    assert sorted(torch.cat([y for _, y in first]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    loader = data[0].train_loader(4, torch.Generator().manual_seed(5))
    list(loader)
    state = loader.state_dict()
    again = data[0].train_loader(4, torch.Generator().manual_seed(99))
    again.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(list(again), second))
    shards = [data[0].train_loader(4, torch.Generator().manual_seed(5), rank=r, world_size=2)
              for r in (0, 1)]
    halves = [list(s) for s in shards]
    assert len(halves[0]) == 2 and all(x.shape[0] == 2 for part in halves for x, _ in part)
    for (x0, _), (x1, _), (x, _) in zip(halves[0], halves[1], first):
        assert torch.equal(torch.cat([x0, x1]), x)  # the shards make up the global batch


def test_random_resized_crop_boxes_follow_the_recipe():
    from heat_fast.data.imagenet import _random_resized_box
    rng = np.random.default_rng(0)
    for width, height in ((40, 30), (300, 200), (50, 500)):
        for _ in range(200):
            left, top, w, h = _random_resized_box(width, height, rng)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height
            inside = 0.08 * width * height * 0.9 <= w * h <= width * height
            ratio_ok = 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
            fallback = (w, h) in ((width, round(width / min(max(width / height, 0.75), 4 / 3))),
                                  (round(height * min(max(width / height, 0.75), 4 / 3)), height))
            assert (inside and ratio_ok) or fallback, (width, height, w, h)


def test_validation_split_is_seeded_disjoint_and_leaves_the_test_set(tmp_path):
    data = load_dataset("digits")
    rest, val = data.split_validation(0.1, seed=3)
    again, val_again = data.split_validation(0.1, seed=3)
    assert rest.train_size == 1437 - 144 and val.test_size == 144
    assert torch.equal(val.test_x, val_again.test_x) and torch.equal(rest.train_y, again.train_y)
    assert torch.equal(rest.test_x, data.test_x)
    seen = {tuple(row.tolist()) for row in data.train_x.flatten(1)}
    held = {tuple(row.tolist()) for row in val.test_x.flatten(1)}
    kept = {tuple(row.tolist()) for row in rest.train_x.flatten(1)}
    assert held <= seen and kept <= seen and len(held & kept) <= 2  # digits has a few duplicates
    assert not torch.equal(data.split_validation(0.1, seed=4)[1].test_y, val.test_y)
    with pytest.raises(DatasetError, match="both need at least one"):
        data.split_validation(0.0001, seed=0)
    _image_tree(tmp_path)
    tree = load_dataset("imagenet", str(tmp_path), image_size=8)
    tree_rest, tree_val = tree.split_validation(1 / 3, seed=0)
    assert (tree_rest.train_size, tree_val.test_size) == (6, 3)
    assert not set(tree_rest.train_paths.tolist()) & set(tree_val.test_paths.tolist())
    assert tree_val.test_subset(2)[0].shape == (2, 3, 8, 8)


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
