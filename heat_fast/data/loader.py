"""A minimal batch iterator over in-memory tensors with a reproducible shuffle."""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

Order = TypeVar("Order", Tensor, Sequence[int])


def check_sharding(batch_size: int, rank: int, world_size: int) -> None:
    """ValueError unless batch_size >= 1, 0 <= rank < world_size and world_size | batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"need 0 <= rank < world_size and batch_size divisible by world_size, "
                         f"got rank {rank}, world_size {world_size}, batch_size {batch_size}")


def batch_count(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def rank_batches(order: Order, batch_size: int, rank: int, world_size: int,
                 drop_last: bool) -> Iterator[Order]:
    """Slice ``rank`` of each global batch of ``batch_size`` taken from ``order`` in turn."""
    share = batch_size // world_size
    for i in range(batch_count(len(order), batch_size, drop_last)):
        start = i * batch_size + rank * share
        yield order[start:start + share]


class TensorLoader:
    """Yields (x, y) batches of ``batch_size``; each pass draws a new order from ``generator``.

    The order depends only on the generator's state, which :meth:`state_dict` /
    :meth:`load_state_dict` save and restore (so a resumed run sees the same batches).
    The tensors stay where they are; put them on the training device once beforehand.

    Sharded (``world_size`` > 1): ``batch_size`` is the global batch and must be divisible by
    ``world_size``; every rank draws the same order (give each the same generator seed) and
    yields slice ``rank`` of each global batch, so the ranks' batches are disjoint and together
    are the single-process batch. An incomplete last global batch is dropped.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = True,
                 generator: Optional[torch.Generator] = None, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        check_sharding(batch_size, rank, world_size)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.drop_last = drop_last or world_size > 1
        self.rank, self.world_size = rank, world_size
        self.generator = generator if generator is not None else torch.Generator()

    def __len__(self) -> int:
        return batch_count(self.images.shape[0], self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        n = self.images.shape[0]
        order = (torch.randperm(n, generator=self.generator) if self.shuffle
                 else torch.arange(n)).to(self.images.device)
        for idx in rank_batches(order, self.batch_size, self.rank, self.world_size, self.drop_last):
            yield self.images[idx], self.labels[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
