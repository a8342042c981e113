"""VGG with batch norm for CIFAR: ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``.

Five conv blocks separated by 2×2 max-pools, global average pooling and one linear classifier,
as in the CRD / mdistiller code (whose ``vggN`` entries are the ``_bn`` variants). Each block is a
``Sequential`` of conv(bias)-BN-ReLU triples whose final ReLU is applied in ``forward`` instead,
which fixes the reference keys ``block{0..4}.{3j, 3j+1}.*`` and ``classifier.*``.

Like the reference, a 32×32 input is pooled three times (the pool between blocks 3 and 4 is only
used for inputs of 64 pixels or more, e.g. Tiny-ImageNet).
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from .registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

# Output channels of the convs in each of the five blocks.
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cout in widths:
        layers += [
            nn.Conv2d(cin, cout, kernel_size=3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        cin = cout
    return nn.Sequential(*layers[:-1])  # last ReLU happens in forward (keeps the pre-activation)


class VGG(nn.Module):
    """VGG-``depth`` with batch norm; ``depth`` in :data:`VGG_CONFIGS`."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        cfg = VGG_CONFIGS[depth]
        cin = in_channels
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _block(cin, widths))
            cin = widths[-1]
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        large = x.shape[-2] >= 64
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        if large:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _register(depth: int) -> None:
    def build(num_classes: int, in_channels: int = 3) -> nn.Module:
        return VGG(depth, num_classes, in_channels)

    build.__doc__ = f"VGG-{depth} with batch norm."
    register_model(f"vgg{depth}", family="cifar", aliases=(f"vgg{depth}_bn",))(build)


for _depth in VGG_CONFIGS:
    _register(_depth)
