"""Wide ResNets (Zagoruyko & Komodakis) for CIFAR: ``wrn_{depth}_{width}``.

Pre-activation blocks, depth ``6n + 4``, widths 16-16k-32k-64k. Parameter names follow the CRD /
mdistiller code (``conv1 block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2[/convShortcut] bn1 fc``) so
released teachers such as ``wrn_40_2`` load strictly. Pooling is adaptive (28×28 inputs work).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register_model

__all__ = ["WideResNet"]


class _PreActBlock(nn.Module):
    """BN-ReLU-conv ×2. When the width changes, the shortcut projects the *activated* input,
    as in the reference (the checkpoints were trained that way, so the forward must match)."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = cin == cout
        # camelCase: the reference parameter name (checkpoint keys end in .convShortcut.weight)
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class _Stage(nn.Module):
    """Holds its blocks under ``layer`` to reproduce the reference key ``block1.layer.0...``."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                _PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` with optional dropout inside the blocks."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = _Stage(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = _Stage(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _register(depth: int, width: int) -> None:
    def build(num_classes: int, in_channels: int = 3, drop_rate: float = 0.0) -> nn.Module:
        return WideResNet(depth, width, num_classes, in_channels, drop_rate)

    build.__doc__ = f"WRN-{depth}-{width}."
    register_model(f"wrn_{depth}_{width}", family="cifar")(build)


for _depth, _width in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _width)
