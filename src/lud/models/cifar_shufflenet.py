"""ShuffleNet V1 / V2 for CIFAR as used in the CRD / mdistiller benchmarks.

* ``ShuffleV1``: groups 3, stage widths 240-480-960, 4-8-4 bottlenecks, a 1×1 stride-1 stem
  (no early down-sampling for 32×32 inputs); 0.95 M parameters at 100 classes.
* ``ShuffleV2``: net size 1 (116-232-464 channels, 3-7-3 blocks, 1024-channel final 1×1 conv);
  1.36 M parameters at 100 classes.

Parameter names match the reference code. Pooling is adaptive, so 28×28 inputs work too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register_model

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "channel_shuffle"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across ``groups``: [N, g·c, H, W] → view [N, g, c] → transpose."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _V1Bottleneck(nn.Module):
    """Grouped 1×1 → shuffle → depthwise 3×3 → grouped 1×1; stride 2 concatenates an avg-pooled
    shortcut (so ``out_planes`` excludes the shortcut channels), stride 1 adds it."""

    def __init__(self, cin: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The 24-channel stem output is too narrow to split, so the first conv is dense there.
        self.first_groups = 1 if cin == 24 else groups
        self.conv1 = nn.Conv2d(cin, mid, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(
            mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 for 32×32 inputs."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for stage, (cout, n) in enumerate(zip(out_planes, num_blocks), start=1):
            blocks = []
            for i in range(n):
                # the first block of a stage concatenates its input, so it produces cout - cin
                blocks.append(
                    _V1Bottleneck(cin, cout - cin if i == 0 else cout, 2 if i == 0 else 1, groups)
                )
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class _V2Basic(nn.Module):
    """Split channels in half; transform the second half (1×1, depthwise 3×3, 1×1); concat; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        keep, branch = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], dim=1), 2)


class _V2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input; their outputs are concatenated."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        # left branch: depthwise 3×3 stride 2 → 1×1
        self.conv1 = nn.Conv2d(cin, cin, kernel_size=3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1×1 → depthwise 3×3 stride 2 → 1×1
        self.conv3 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 for 32×32 inputs (1×1 stem, no max-pool)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for stage, (cout, n) in enumerate(zip(out_channels[:3], num_blocks), start=1):
            setattr(
                self,
                f"layer{stage}",
                nn.Sequential(_V2Down(cin, cout), *[_V2Basic(cout) for _ in range(n)]),
            )
            cin = cout
        self.conv2 = nn.Conv2d(cin, out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("ShuffleV1", family="cifar", aliases=("shufflenetv1",))
def shufflev1(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ShuffleNet V1 (groups 3) of the CRD / mdistiller benchmarks."""
    return ShuffleNetV1(num_classes, in_channels)


@register_model("ShuffleV2", family="cifar", aliases=("shufflenetv2",))
def shufflev2(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ShuffleNet V2 (net size 1) of the CRD / mdistiller benchmarks."""
    return ShuffleNetV2(num_classes, in_channels)
