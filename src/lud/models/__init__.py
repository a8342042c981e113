"""Model zoo: CIFAR (CRD / mdistiller names), small nets for MNIST-sized data, ImageNet models.

>>> from lud.models import build_model
>>> teacher = build_model("resnet32x4", num_classes=100, pretrained="resnet32x4_best.pth")  # doctest: +SKIP
>>> student = build_model("cnn_small", num_classes=10, in_channels=1, input_shape=(1, 28, 28))

Every model maps a batch of images to logits of shape ``(batch, num_classes)``.
"""

from __future__ import annotations

# Importing the family modules registers their models.
from . import (
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_shufflenet,
    cifar_vgg,
    cifar_wrn,
    imagenet,
    small,
)
from .checkpoint import extract_state_dict, load_checkpoint_weights, strip_wrapper_prefixes
from .registry import (
    FAMILIES,
    available_models,
    build_model,
    model_aliases,
    model_family,
    register_model,
    resolve_model_name,
)

__all__ = [
    "FAMILIES",
    "available_models",
    "build_model",
    "extract_state_dict",
    "load_checkpoint_weights",
    "model_aliases",
    "model_family",
    "register_model",
    "resolve_model_name",
    "strip_wrapper_prefixes",
]

del cifar_mobilenetv2, cifar_resnet, cifar_shufflenet, cifar_vgg, cifar_wrn, imagenet, small
