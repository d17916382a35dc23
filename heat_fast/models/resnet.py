"""ResNet-18 (basic blocks, D = 512) and ResNet-50 (bottlenecks, D = 2048), He et al. 2016.

Images of at most 64 pixels get the CIFAR stem (3×3 conv, stride 1, no max-pool); larger
ones the ImageNet stem (7×7 conv stride 2, 3×3 max-pool).
"""
from __future__ import annotations

from typing import Sequence, Type, Union

from torch import Tensor, nn

from heat_fast.models.pooling import GlobalAvgPool

SMALL_IMAGE_LIMIT = 64


def _downsample(cin: int, cout: int, stride: int) -> Union[nn.Module, None]:
    if cin == cout and stride == 1:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True), nn.Conv2d(planes, planes, 3, 1, 1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut = _downsample(cin, planes, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.residual(x) + skip)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.residual = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True), nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = _downsample(cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.residual(x) + skip)


def _resnet_body(block: Type[nn.Module], counts: Sequence[int], in_channels: int,
                 image_size: int) -> nn.Sequential:
    if image_size <= SMALL_IMAGE_LIMIT:
        layers: list = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                        nn.ReLU(inplace=True)]
    else:
        layers = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, count in enumerate(counts):
        planes = 64 * 2 ** stage
        for i in range(count):
            layers.append(block(cin, planes, 2 if i == 0 and stage > 0 else 1))
            cin = planes * block.expansion
    layers.append(GlobalAvgPool())
    return nn.Sequential(*layers)


def resnet18_body(in_channels: int = 3, image_size: int = 32) -> nn.Sequential:
    """ResNet-18 body, features D = 512."""
    return _resnet_body(_Basic, (2, 2, 2, 2), in_channels, image_size)


def resnet50_body(in_channels: int = 3, image_size: int = 224) -> nn.Sequential:
    """ResNet-50 body, features D = 2048."""
    return _resnet_body(_Bottleneck, (3, 4, 6, 3), in_channels, image_size)
