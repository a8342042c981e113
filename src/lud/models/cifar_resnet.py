"""CIFAR ResNets as used by the CRD / mdistiller benchmarks.

Two families, with parameter names identical to the reference code so that the released CIFAR-100
teacher checkpoints load with ``strict=True``:

* ``resnet{8,14,20,32,44,56,110}`` and ``resnet8x4`` / ``resnet32x4``: the 3-stage CIFAR ResNet of
  He et al. (depth 6n+2, basic blocks, 16-32-64 channels; ``x4`` variants 32 → 64-128-256 channels),
  keys ``conv1 bn1 layer{1,2,3}.{i}.conv1/bn1/conv2/bn2[.downsample.{0,1}] fc``.
* ``ResNet18`` / ``ResNet50``: the 4-stage ImageNet layout with a 3×3 stride-1 stem for 32×32
  inputs, keys ``conv1 bn1 layer{1..4}.{i}.conv*/bn*[.shortcut.{0,1}] linear``.

Global average pooling is adaptive, so the same weights run on 28×28 as well as 32×32 inputs.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register_model

__all__ = ["CifarResNet", "ResNetV2"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    """1×1 conv + BN shortcut used when a block changes resolution or width."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
    )


class _Basic(nn.Module):
    """Post-activation basic block; ``downsample`` (or ``shortcut``) holds the projection."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut_name: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self._shortcut_name = shortcut_name
        proj = _projection(cin, cout, stride) if stride != 1 or cin != cout else None
        # The two reference families name the projection differently (and the V2 family keeps an
        # empty Sequential when there is none, which has no state and so no keys).
        setattr(self, shortcut_name, proj if proj is not None else nn.Sequential())

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + getattr(self, self._shortcut_name)(x))


class _Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 (×4 expansion) block of the CIFAR ResNet50."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = (
            _projection(cin, cout, stride) if stride != 1 or cin != cout else nn.Sequential()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """3-stage CIFAR ResNet of depth ``6n + 2`` with stage widths ``widths = (stem, s1, s2, s3)``."""

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for stage, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            blocks = [
                _Basic(cin if i == 0 else cout, cout, stride if i == 0 else 1, "downsample")
                for i in range(n)
            ]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ResNetV2(nn.Module):
    """4-stage ResNet (64-128-256-512 planes) with a CIFAR stem: ``ResNet18`` / ``ResNet50``."""

    def __init__(
        self,
        bottleneck: bool,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for stage, (planes, n, stride) in enumerate(
            zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), start=1
        ):
            layers: list[nn.Module] = []
            for i in range(n):
                s = stride if i == 0 else 1
                if bottleneck:
                    layers.append(_Bottleneck(cin, planes, s))
                    cin = planes * _Bottleneck.expansion
                else:
                    layers.append(_Basic(cin, planes, s, "shortcut"))
                    cin = planes
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.linear = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _register_cifar_resnet(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def build(num_classes: int, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, widths, num_classes, in_channels)

    build.__doc__ = f"CIFAR ResNet-{depth}, stage widths {widths}."
    register_model(name, family="cifar")(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(f"resnet{_depth}", _depth, (16, 16, 32, 64))
_register_cifar_resnet("resnet8x4", 8, (32, 64, 128, 256))
_register_cifar_resnet("resnet32x4", 32, (32, 64, 128, 256))


@register_model("ResNet18", family="cifar", aliases=("resnet18_cifar",))
def resnet18_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-18 with a 3×3 stem for 32×32 inputs (11.2 M parameters at 100 classes)."""
    return ResNetV2(False, (2, 2, 2, 2), num_classes, in_channels)


@register_model("ResNet50", family="cifar", aliases=("resnet50_cifar",))
def resnet50_cifar(num_classes: int, in_channels: int = 3) -> nn.Module:
    """ResNet-50 with a 3×3 stem for 32×32 inputs (23.7 M parameters at 100 classes)."""
    return ResNetV2(True, (3, 4, 6, 3), num_classes, in_channels)
