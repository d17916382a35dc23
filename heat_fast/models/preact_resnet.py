"""PreActResNet-18 (He et al. 2016, identity mappings), the FastAT model; features D = 512."""
from __future__ import annotations

from torch import Tensor, nn

from heat_fast.models.pooling import GlobalAvgPool
from heat_fast.ops.affine_relu import batch_norm_relu


class _PreActBlock(nn.Module):
    conv_bn_pairs = (("conv1", "bn2"),)  # conv1's output feeds bn2 only (heat_fast.training.folding)

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = (None if cin == cout and stride == 1
                         else nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        act = batch_norm_relu(self.bn1, self.relu, x)
        skip = x if self.shortcut is None else self.shortcut(act)
        return self.conv2(self.relu(self.bn2(self.conv1(act)))) + skip


def preact_resnet18_body(in_channels: int = 3) -> nn.Sequential:
    """3×3 stem, four stages of two pre-activation blocks (64, 128, 256, 512), BN-ReLU, pool."""
    layers: list = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_PreActBlock(cin, cout, stride), _PreActBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.BatchNorm2d(512), nn.ReLU(), GlobalAvgPool()]
    return nn.Sequential(*layers)
