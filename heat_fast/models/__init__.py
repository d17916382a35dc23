"""Models for adversarial training, each with an HE head or a plain linear head.

:func:`build_model` builds any of :data:`MODEL_NAMES`. Every model takes inputs in [0, 1]
(B, C, H, W), normalizes them per channel inside (buffers ``mean``/``std``), and exposes
``features(x)`` (B, D), ``forward(x)`` (B, num_classes) — raw cosines for an HE head —
the attribute ``head`` (:class:`~heat_fast.HELinear` or ``nn.Linear``) and ``he``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from torch import nn

from heat_fast.models.base import Classifier
from heat_fast.models.preact_resnet import preact_resnet18_body
from heat_fast.models.resnet import resnet18_body, resnet50_body
from heat_fast.models.small_cnn import small_cnn_body
from heat_fast.models.wide_resnet import wide_resnet_body

# name -> (body factory (in_channels, image_size) -> module, feature dimension D)
_REGISTRY: Dict[str, Tuple[Callable[[int, int], nn.Module], int]] = {
    "wrn-34-10": (lambda c, s: wide_resnet_body(34, 10, c), 640),
    "wrn-34-20": (lambda c, s: wide_resnet_body(34, 20, c), 1280),
    "wrn-28-10": (lambda c, s: wide_resnet_body(28, 10, c), 640),
    "preact-resnet18": (lambda c, s: preact_resnet18_body(c), 512),
    "resnet18": (lambda c, s: resnet18_body(c, s), 512),
    "resnet50": (lambda c, s: resnet50_body(c, s), 2048),
    "small-cnn": (lambda c, s: small_cnn_body(c), 64),
}
MODEL_NAMES: Tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, num_classes: int, he: bool, in_channels: int = 3,
                image_size: int = 32, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None,
                weight_norm: Union[bool, str] = True) -> Classifier:
    """Build model ``name`` (one of :data:`MODEL_NAMES`) with an HE or a linear head.

    ``mean``/``std``: per-channel normalization applied inside the model (None: 0 and 1).
    ``weight_norm``: the HE head's mode (:class:`~heat_fast.HELinear`): True differentiates
    through the weight normalization, "project" renormalizes the stored weight in place
    with no gradient through it (AT_HE); the training losses follow the head's mode.
    Raises ValueError for an unknown name, num_classes < 2 or bad sizes.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if int(in_channels) < 1 or int(image_size) < 1:
        raise ValueError(
            f"in_channels and image_size must be >= 1, got {in_channels} and {image_size}"
        )
    factory, dim = _REGISTRY[name]
    return Classifier(factory(int(in_channels), int(image_size)), dim, int(num_classes), he,
                      int(in_channels), mean, std, weight_norm)


__all__ = ["Classifier", "MODEL_NAMES", "build_model"]
