"""A small CNN for small images (8×8 digits up to 32×32): three conv-BN-ReLU stages."""
from __future__ import annotations

from torch import nn

from heat_fast.models.pooling import GlobalAvgPool, MaxPool


def _conv_bn(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU(inplace=True)] if relu else []))


def small_cnn_body(in_channels: int = 1, width: int = 16) -> nn.Sequential:
    """Body with output (B, 4·width): conv(w) → conv(2w) → maxpool → conv(4w) → global avg.

    The second stage's ReLU runs after the max-pool (ReLU and max commute exactly, values and
    gradients alike), on a quarter of the elements; the parameter names are those of
    conv-BN-ReLU, maxpool."""
    return nn.Sequential(
        _conv_bn(in_channels, width), _conv_bn(width, 2 * width, relu=False),
        nn.Sequential(MaxPool(2), nn.ReLU(inplace=True)),
        _conv_bn(2 * width, 4 * width), GlobalAvgPool(),
    )
