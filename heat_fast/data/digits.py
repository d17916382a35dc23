"""scikit-learn's bundled handwritten digits: 1,797 real 8×8 grey images, 10 classes.

Pixels 0..16 are scaled to [0, 1] by /16. A fixed stratified split (seed 0) keeps 20% as
the test set (1,437 train / 360 test). Nothing is downloaded.
"""
from __future__ import annotations

import torch

from heat_fast.data.base import Dataset, channel_stats

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits() -> Dataset:
    """The digits dataset as (N, 1, 8, 8) float32 tensors in [0, 1]."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
        stratify=labels.numpy(),
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean, std = channel_stats(images[train_idx])
    return Dataset("digits", images[train_idx], labels[train_idx], images[test_idx],
                   labels[test_idx], 10, mean, std)
