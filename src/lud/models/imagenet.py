"""ImageNet-scale models: torchvision ResNets / MobileNetV2 and the KD benchmark's MobileNetV1.

torchvision is imported only when one of its models is built (it is an optional dependency:
``pip install 'lud[vision]'``); no weights are ever downloaded — pass ``pretrained=<path>`` to
:func:`lud.models.build_model` to load a local file (torchvision's own ``.pth`` files load as is).

``imagenet_mobilenetv1`` is the MobileNet (Howard et al., width 1.0) of the ImageNet
ResNet50 → MobileNet KD benchmark, with the mdistiller parameter names ``model.{0..13}.* fc.*``
(4.23 M parameters at 1000 classes); its pooling is adaptive instead of a fixed 7×7.
"""

from __future__ import annotations

from types import ModuleType

from torch import Tensor, nn

from .registry import register_model

__all__ = ["MobileNetV1"]


def _torchvision_models(model_name: str) -> ModuleType:
    try:
        from torchvision import models  # lazy: optional and slow to import
    except ImportError as exc:  # also raised when torchvision's C ops do not match torch
        raise ImportError(
            f"model '{model_name}' needs torchvision: pip install 'lud[vision]' (import failed: {exc})"
        ) from exc
    return models


def _replace_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Same conv with another input-channel count (keeps the parameter name)."""
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )


def _register_tv_resnet(depth: int) -> None:
    def build(
        num_classes: int, in_channels: int = 3, zero_init_residual: bool = False
    ) -> nn.Module:
        factory = getattr(_torchvision_models(f"imagenet_resnet{depth}"), f"resnet{depth}")
        model = factory(
            weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
        )
        model.conv1 = _replace_conv(model.conv1, in_channels)
        return model

    build.__doc__ = f"torchvision ResNet-{depth} (random init)."
    register_model(f"imagenet_resnet{depth}", family="imagenet")(build)


for _depth in (18, 34, 50):
    _register_tv_resnet(_depth)


@register_model("imagenet_mobilenetv2", family="imagenet")
def imagenet_mobilenetv2(
    num_classes: int, in_channels: int = 3, width_mult: float = 1.0
) -> nn.Module:
    """torchvision MobileNetV2 (random init)."""
    model = _torchvision_models("imagenet_mobilenetv2").mobilenet_v2(
        weights=None, num_classes=num_classes, width_mult=width_mult
    )
    model.features[0][0] = _replace_conv(model.features[0][0], in_channels)
    return model


def _conv_bn_relu(
    cin: int, cout: int, stride: int, groups: int = 1, kernel: int = 3
) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


# (output channels, stride) of the 13 depthwise-separable blocks after the 32-channel stem.
_MOBILENET_V1 = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNet V1: a stride-2 3×3 stem, 13 depthwise-separable blocks, GAP, linear."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_channels, 32, 2))]
        cin = 32
        for cout, stride in _MOBILENET_V1:
            # depthwise 3×3 then pointwise 1×1, each with BN + ReLU
            blocks.append(
                nn.Sequential(
                    *_conv_bn_relu(cin, cin, stride, groups=cin),
                    *_conv_bn_relu(cin, cout, 1, kernel=1),
                )
            )
            cin = cout
        blocks.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.model(x).flatten(1))


@register_model("imagenet_mobilenetv1", family="imagenet")
def imagenet_mobilenetv1(num_classes: int, in_channels: int = 3) -> nn.Module:
    """MobileNetV1 of the ImageNet KD benchmark (mdistiller parameter names)."""
    return MobileNetV1(num_classes, in_channels)
