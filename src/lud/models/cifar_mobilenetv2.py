"""MobileNetV2 for CIFAR as used in the CRD / mdistiller benchmarks (``MobileNetV2``).

The reference ``mobile_half``: expansion 6, width multiplier 0.5, a stride-2 3×3 stem and the
usual seven inverted-residual stages, but the last 1×1 conv keeps 1280 channels (the reference
only widens it for multipliers above 1). 0.81 M parameters at 100 classes. Keys
``conv1.{0,1} blocks.{s}.{i}.conv.{0..7} conv2.{0,1} classifier.0`` match the reference.
Pooling is adaptive, so 28×28 inputs work too.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register_model

__all__ = ["CifarMobileNetV2"]

# (expansion t, output channels c, repeats n, first stride s); t=None means "use expand_ratio".
_SETTING: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _InvertedResidual(nn.Module):
    """Pointwise expand → depthwise 3×3 → linear pointwise; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 with expansion ``expand_ratio`` and channel multiplier ``width_mult``."""

    def __init__(
        self, num_classes: int, in_channels: int = 3, expand_ratio: int = 6, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            cout = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(
                    _InvertedResidual(
                        cin, cout, s if i == 0 else 1, expand_ratio if t is None else t
                    )
                )
                cin = cout
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("MobileNetV2", family="cifar", aliases=("mobile_half", "mobilenetv2_cifar"))
def mobilenetv2_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """The half-width CIFAR MobileNetV2 (``mobile_half``) of the CRD / mdistiller benchmarks."""
    return CifarMobileNetV2(num_classes, in_channels, expand_ratio=6, width_mult=0.5)
