"""The model as the evaluation's attacks query it: the same function, computed faster.

Inside :func:`attack_view` the model's plain convolutions run with the eval-mode BatchNorm
after them folded in (:func:`heat_fast.training.folding.crafting_convolutions`), and, for the
``channels_last`` view, with channels_last weights and inputs: on a CPU mkldnn's NHWC
convolutions are faster and NCHW max-pooling is 10–50× slower than NHWC (small CNN, 360
digits: forward 6.3 → 2.4 ms, input gradient 12.2 → 6.3 ms, one thread).

Not every model computes the same function in every view: a user model that flattens with
``.view`` fails on NHWC activations, and one whose modules are reused or run out of their
``nn.Sequential`` order must not be folded. So :func:`pick_view` probes the candidates for the
device on a batch (one no-grad forward each) and keeps the fastest whose logits equal the
model's up to float32 rounding; ``"none"`` (the model as given) when no candidate does.

Only the attacks see the view. Every adversarial example is then verified on the model as
given, outside the block, so a difference can only make an attack miss an example, never
count one as broken that the model classifies correctly.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import torch
from torch import Tensor, nn

VIEWS = ("channels_last", "folded", "none")
# logits of a view may differ from the model's by float32 rounding of the folded weights and
# of another summation order: relative to the logits' magnitude, far below 1e-3
PROBE_TOLERANCE = 1e-3


def candidate_views(device: torch.device) -> Tuple[str, ...]:
    """The views worth probing on ``device``, fastest first: channels_last only on a CPU
    (float32 NHWC convolutions gain little on GPUs)."""
    return VIEWS if device.type == "cpu" else VIEWS[1:]


def as_layout(x: Tensor, memory_format: torch.memory_format) -> Tensor:
    """x (B, C, H, W) in ``memory_format``; other shapes (and preserve_format) as they are."""
    if memory_format == torch.preserve_format or x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format)


@contextlib.contextmanager
def attack_view(model: nn.Module, view: str) -> Iterator[torch.memory_format]:
    """Inside the block ``model`` computes as ``view`` (one of :data:`VIEWS`) says; yields the
    layout to give the attack's inputs (:func:`as_layout`). ``model`` must be in eval mode
    with frozen weights for the duration; its modules are restored on exit."""
    if view == "none":
        yield torch.preserve_format
        return
    from heat_fast.training.folding import crafting_convolutions

    memory_format = torch.channels_last if view == "channels_last" else torch.preserve_format
    with crafting_convolutions(model, memory_format=memory_format):
        yield memory_format


def _same_logits(got: Tensor, want: Tensor) -> bool:
    if got.shape != want.shape or not bool(torch.isfinite(want).all()):
        return False
    scale = float(want.abs().max()) + 1.0
    return float((got.float() - want.float()).abs().max()) <= PROBE_TOLERANCE * scale


@torch.no_grad()
def pick_view(model: nn.Module, x: Tensor) -> str:
    """The fastest of :func:`candidate_views` that computes ``model``'s logits on the batch
    ``x`` (module docstring); ``model`` in eval mode."""
    want = model(x)
    for view in candidate_views(x.device)[:-1]:
        try:
            with attack_view(model, view) as layout:
                got = model(as_layout(x, layout))
        except RuntimeError:
            continue
        if _same_logits(got, want):
            return view
    return "none"
