"""Wide residual networks WRN-depth-k (Zagoruyko & Komodakis), the CIFAR AT workhorse.

Pre-activation basic blocks in three groups of widths 16k, 32k, 64k (strides 1, 2, 2),
n = (depth − 4) / 6 blocks per group; the body ends with BN-ReLU and global average
pooling, so features have D = 64k.
"""
from __future__ import annotations

from torch import Tensor, nn

from heat_fast.models.pooling import GlobalAvgPool
from heat_fast.ops.affine_relu import batch_norm_relu


class _Block(nn.Module):
    conv_bn_pairs = (("conv1", "bn2"),)  # conv1's output feeds bn2 only (heat_fast.training.folding)

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (None if cin == cout and stride == 1
                         else nn.Conv2d(cin, cout, 1, stride, 0, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        act = batch_norm_relu(self.bn1, self.relu1, x)
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


def wide_resnet_body(depth: int, widen: int, in_channels: int = 3) -> nn.Sequential:
    """WRN-depth-widen body; depth must be 6n + 4."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 28, 34), got {depth}")
    n = (depth - 4) // 6
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    layers: list = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
    for group, stride in zip(range(1, 4), (1, 2, 2)):
        for i in range(n):
            layers.append(_Block(widths[group - 1] if i == 0 else widths[group], widths[group],
                                 stride if i == 0 else 1))
    layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True), GlobalAvgPool()]
    return nn.Sequential(*layers)
