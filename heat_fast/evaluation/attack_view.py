"""The model as the evaluation's attacks query it: the same function, computed faster.

Inside :func:`attack_view` the model's plain convolutions run with the eval-mode BatchNorm
after them folded in (:func:`heat_fast.training.folding.crafting_convolutions`), and on a CPU
with channels_last weights and inputs: mkldnn's NHWC convolutions are faster there and NCHW
max-pooling is 10–50× slower than NHWC (small CNN, 360 digits: forward 6.3 → 2.4 ms, input
gradient 12.2 → 6.3 ms, one thread). Its outputs differ from the model's by float32 rounding
only.

Only the attacks see the view. Every adversarial example is then verified on the model as
given, outside the block, so a rounding difference can only make an attack miss an example,
never count one as broken that the model classifies correctly.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn


def attack_layout(device: torch.device) -> torch.memory_format:
    """The layout the view runs convolutions in on ``device``: channels_last on a CPU; the
    model's own elsewhere (float32 NHWC convolutions gain little on GPUs)."""
    return torch.channels_last if device.type == "cpu" else torch.preserve_format


def as_layout(x: Tensor, memory_format: torch.memory_format) -> Tensor:
    """x (B, C, H, W) in ``memory_format``; other shapes (and preserve_format) as they are."""
    if memory_format == torch.preserve_format or x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format)


@contextlib.contextmanager
def attack_view(model: nn.Module, device: torch.device) -> Iterator[torch.memory_format]:
    """Inside the block ``model`` computes as described in the module docstring; yields the
    layout to give the attack's inputs (:func:`as_layout`). ``model`` must be in eval mode
    with frozen weights for the duration; its modules are restored on exit."""
    from heat_fast.training.folding import crafting_convolutions

    memory_format = attack_layout(device)
    with crafting_convolutions(model, memory_format=memory_format):
        yield memory_format
