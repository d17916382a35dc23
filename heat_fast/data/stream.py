"""Batches decoded from files by DataLoader worker processes, in a reproducible order.

Only the file paths (a compact numpy byte array, so forked workers share it without
copy-on-access) and labels are held in memory; each batch's images are decoded when it is
needed. The order and every random crop come from one generator in the main process: each
pass draws a permutation and one seed per example, and a worker decodes example ``i`` with
its seed, so the batches are the same for any number of workers and a resumed run (the
generator state is saved with :meth:`StreamLoader.state_dict`) sees the same batches.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from heat_fast.data.loader import batch_count, check_sharding, rank_batches

# decode(path, seed) -> (H, W, C) uint8 image; seed < 0 means "no randomness" (evaluation)
Decode = Callable[[str, int], np.ndarray]
SEED_RANGE = 2 ** 31


def path_array(paths: Sequence[str]) -> np.ndarray:
    """Paths as one fixed-width UTF-8 byte array."""
    return np.array([p.encode() for p in paths], dtype=np.bytes_) if len(paths) else np.array([], dtype="S1")


class _Files(torch.utils.data.Dataset):
    """Item (index, seed) → (decoded image, label)."""

    def __init__(self, paths: np.ndarray, labels: Tensor, decode: Decode):
        self.paths, self.labels, self.decode = paths, labels, decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[np.ndarray, int]:
        index, seed = key
        return self.decode(self.paths[index].decode(), seed), int(self.labels[index])


def collate(items: List[Tuple[np.ndarray, int]]) -> Tuple[Tensor, Tensor]:
    """(B, C, H, W) float32 in [0, 1] and (B,) int64 labels."""
    images = torch.from_numpy(np.stack([image for image, _ in items])).permute(0, 3, 1, 2)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return images.float().div_(255.0), labels


def decode_all(paths: np.ndarray, labels: Tensor, decode: Decode, workers: int = 0,
               batch_size: int = 64) -> Tuple[Tensor, Tensor]:
    """Every file decoded without randomness (seed -1), in order, as in-memory tensors."""
    keys = [(i, -1) for i in range(len(paths))]
    batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    loader = torch.utils.data.DataLoader(_Files(paths, labels, decode), batch_sampler=batches,
                                         num_workers=workers, collate_fn=collate)
    parts = list(loader)
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


class StreamLoader:
    """Shuffled (x, y) batches of ``batch_size`` decoded by ``workers`` processes (0: in this
    process). Sharded like :class:`~heat_fast.data.TensorLoader`: with ``world_size`` > 1,
    ``batch_size`` is the global batch, every rank draws the same order and decodes slice
    ``rank`` of each global batch, and an incomplete last global batch is dropped."""

    def __init__(self, paths: np.ndarray, labels: Tensor, decode: Decode, batch_size: int,
                 generator: torch.Generator, workers: int = 0, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False):
        check_sharding(batch_size, rank, world_size)
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.files = _Files(paths, labels, decode)
        self.batch_size, self.generator, self.workers = int(batch_size), generator, int(workers)
        self.rank, self.world_size, self.pin_memory = rank, world_size, pin_memory
        self.drop_last = world_size > 1

    def __len__(self) -> int:
        return batch_count(len(self.files), self.batch_size, self.drop_last)

    def _batches(self) -> List[List[Tuple[int, int]]]:
        n = len(self.files)
        order = torch.randperm(n, generator=self.generator).tolist()
        seeds = torch.randint(SEED_RANGE, (n,), generator=self.generator).tolist()
        return [[(i, seeds[i]) for i in part] for part in
                rank_batches(order, self.batch_size, self.rank, self.world_size, self.drop_last)]

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.files, batch_sampler=self._batches(), num_workers=self.workers,
            collate_fn=collate, pin_memory=self.pin_memory)
        return iter(loader)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
