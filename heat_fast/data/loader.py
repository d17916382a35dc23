"""A minimal batch iterator over in-memory tensors with a reproducible shuffle."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor


class TensorLoader:
    """Yields (x, y) batches of ``batch_size``; each pass draws a new order from ``generator``.

    The order depends only on the generator's state, which :meth:`state_dict` /
    :meth:`load_state_dict` save and restore (so a resumed run sees the same batches).
    The tensors stay where they are; put them on the training device once beforehand.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool = True,
                 generator: Optional[torch.Generator] = None, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images and labels differ in length: {images.shape[0]} vs {labels.shape[0]}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.generator = generator if generator is not None else torch.Generator()

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        n = self.images.shape[0]
        order = (torch.randperm(n, generator=self.generator) if self.shuffle
                 else torch.arange(n)).to(self.images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
