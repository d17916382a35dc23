"""Batched on-device augmentation: random crop with zero padding and horizontal flip."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(images: Tensor, padding: int = 4, flip: bool = True,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Per-sample random crop (pad ``padding`` zeros, crop back to H×W) and 50% h-flip.

    images (B, C, H, W) on any device; ``generator`` must live on that device. Returns a
    new tensor; the input is left unchanged.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    batch, channels, height, width = images.shape
    device = images.device
    out = images
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(height, device=device)).view(batch, 1, height, 1)
        cols = (dx[:, None] + torch.arange(width, device=device)).view(batch, 1, 1, width)
        out = padded.gather(2, rows.expand(batch, channels, height, padded.shape[3]))
        out = out.gather(3, cols.expand(batch, channels, height, width))
    if flip:
        mask = torch.rand(batch, generator=generator, device=device) < 0.5
        out = torch.where(mask.view(batch, 1, 1, 1), out.flip(3), out)
    return out if out is not images else images.clone()


class Augment:
    """``random_crop_flip`` with fixed settings and its own generator (state saved/restored)."""

    def __init__(self, padding: int, flip: bool, generator: torch.Generator):
        self.padding, self.flip, self.generator = int(padding), bool(flip), generator

    def __call__(self, images: Tensor) -> Tensor:
        return random_crop_flip(images, self.padding, self.flip, self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
