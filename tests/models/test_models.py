"""Tests for the model zoo (lud.models).

The CIFAR references come from mdistiller's own model code (commit in the fixtures' ``_meta``):
``models_cifar_state_dicts.json`` holds every parameter/buffer name and shape and the parameter
count of each reference model at 100 classes, and ``models_cifar_reference_logits.json`` the
logits each reference model gives (eval mode) after :func:`deterministic_fill` on a fixed input.
Matching both means the released CIFAR-100 teachers load strictly *and* compute the same function.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lud.models import (
    FAMILIES,
    available_models,
    build_model,
    load_checkpoint_weights,
    model_aliases,
    model_family,
    register_model,
    resolve_model_name,
)

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
FIXTURES = ROOT / "tests" / "fixtures"
SHAPES = json.loads((FIXTURES / "models_cifar_state_dicts.json").read_text())["models"]
LOGITS = json.loads((FIXTURES / "models_cifar_reference_logits.json").read_text())["logits"]

CIFAR_ZOO = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50",
]  # fmt: skip
SMALL = ["mlp", "mlp_tiny", "cnn_small", "cnn_medium", "cnn_large"]
IMAGENET = [
    "imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50", "imagenet_mobilenetv2",
    "imagenet_mobilenetv1"
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def deterministic_fill(model: nn.Module) -> None:
    """Give every parameter/buffer values that depend only on its name and shape.

    numpy's legacy RandomState is used because its streams are frozen across versions. BN
    scales are ~0.5 and running variances in [0.5, 1.5) so deep residual nets stay O(1).
    """
    state = model.state_dict()
    new = {}
    for name in sorted(state):
        t = state[name]
        if name.endswith("num_batches_tracked"):
            new[name] = t
            continue
        rs = np.random.RandomState(zlib.crc32(name.encode()))
        shape = tuple(t.shape)
        if name.endswith("running_var"):
            v = 0.5 + rs.random_sample(shape)
        elif name.endswith("running_mean"):
            v = 0.1 * rs.standard_normal(shape)
        elif t.dim() >= 2:
            v = rs.standard_normal(shape) / math.sqrt(t.numel() // t.shape[0])
        elif name.endswith(".weight"):
            v = 0.5 + 0.1 * rs.standard_normal(shape)
        else:
            v = 0.1 * rs.standard_normal(shape)
        new[name] = torch.as_tensor(v, dtype=torch.float32)
    model.load_state_dict(new, strict=True)


# ---------------------------------------------------------------- registry


def test_registry_lists_the_whole_zoo_with_families():
    names = available_models()
    assert names == sorted(names)
    for name in CIFAR_ZOO:
        assert name in names and model_family(name) == "cifar"
    for name in SMALL:
        assert model_family(name) == "small"
    for name in IMAGENET:
        assert model_family(name) == "imagenet"
    assert all(model_family(n) in FAMILIES for n in names)
    assert model_family("timm:resnet18") == "imagenet"


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match=r"unknown model 'resnet8x5'.*Did you mean.*'resnet8x4'"):
        build_model("resnet8x5", 10)
    with pytest.raises(ValueError, match="wrn_40_2"):
        build_model("wrn_40_3", 10)


def test_aliases_and_case_insensitive_names_resolve():
    assert resolve_model_name("shufflev1") == "ShuffleV1"
    assert resolve_model_name("mobile_half") == "MobileNetV2"
    assert resolve_model_name("vgg13_bn") == "vgg13"
    assert resolve_model_name("resnet50") == "ResNet50"
    assert all(resolve_model_name(a) == c for a, c in model_aliases().items())


def test_register_rejects_duplicates_and_bad_family():
    with pytest.raises(ValueError, match="already registered"):
        register_model("RESNET8", family="cifar")(lambda num_classes, in_channels: nn.Identity())
    with pytest.raises(ValueError, match="family"):
        register_model("new_net", family="audio")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"depth": 5}, "takes no options, got 'depth'"),
        ({"input_shape": (1, 32, 32)}, "1 channels but in_channels=3"),
        ({"input_shape": (3, 32)}, r"\(C, H, W\)"),
        ({"pretrained": True}, "download"),
    ],
)
def test_bad_build_arguments_raise_value_error(kwargs, message):
    args = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model("resnet8", **args)


def test_option_typo_suggests_the_real_option():
    with pytest.raises(ValueError, match=r"unknown parameter 'droprate'.*'drop_rate'"):
        build_model("wrn_16_2", 10, droprate=0.3)
    assert build_model("wrn_16_2", 10, drop_rate=0.3).block1.layer[0].drop_rate == 0.3


# ---------------------------------------------------------------- CIFAR zoo vs the reference


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_state_dict_names_shapes_and_counts_match_reference(name):
    classes = 1000 if name.startswith("imagenet_") else 100
    model = build_model(name, classes)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = SHAPES[name]["state_dict"]
    assert sorted(set(ref) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(ref)) == [], "keys our model has but the reference lacks"
    assert ours == ref
    assert n_params(model) == SHAPES[name]["num_parameters"]


@pytest.mark.parametrize("name", sorted(LOGITS))
def test_forward_matches_reference_logits(name):
    model = build_model(name, 100, input_shape=(3, 32, 32)).eval()
    deterministic_fill(model)
    x = torch.as_tensor(
        np.random.RandomState(0).standard_normal((2, 3, 32, 32)), dtype=torch.float32
    )
    with torch.no_grad():
        out = model(x)
    expected = torch.tensor(LOGITS[name])
    assert out.shape == (2, 100)
    scale = float(expected.abs().max())
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name", CIFAR_ZOO)
def test_cifar_models_take_grayscale_28x28(name):
    model = build_model(name, 10, in_channels=1, input_shape=(1, 28, 28)).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_adaptive_pool_equals_fixed_8x8_pool_at_32():
    # Adaptive pooling is what lets 28×28 work; at 32×32 it must equal the reference's fixed
    # 8×8 average pool, which we recompute by hand from the last feature map.
    model = build_model("resnet8", 5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.layer3(model.layer2(model.layer1(torch.relu(model.bn1(model.conv1(x))))))
        assert feats.shape[-2:] == (8, 8)
        manual = model.fc(nn.AvgPool2d(8)(feats).flatten(1))
        torch.testing.assert_close(model(x), manual)


# ---------------------------------------------------------------- small nets


def test_small_param_counts_against_hand_formulas():
    def mlp_count(sizes):
        return sum(a * b + b for a, b in itertools.pairwise(sizes))

    assert n_params(build_model("mlp", 10, 1, input_shape=(1, 28, 28))) == mlp_count(
        [784, 256, 128, 10]
    )
    assert n_params(build_model("mlp_tiny", 10, 1, input_shape=(1, 28, 28))) == mlp_count(
        [784, 32, 10]
    )
    assert n_params(build_model("mlp", 10, 1, input_shape=(1, 8, 8), hidden=(50,))) == mlp_count(
        [64, 50, 10]
    )

    def cnn_count(widths, cin=1, classes=10):
        total = 0
        for w in widths:  # bias-free 3×3 conv + BN (weight, bias)
            total += cin * w * 9 + 2 * w
            cin = w
        return total + cin * classes + classes

    assert n_params(build_model("cnn_small", 10, 1)) == cnn_count([16, 32, 64])
    assert n_params(build_model("cnn_medium", 10, 1)) == cnn_count([32, 64, 128, 128])
    assert n_params(build_model("cnn_large", 10, 1)) == cnn_count([32, 64, 128, 256, 256])
    assert 20_000 <= n_params(build_model("cnn_small", 10, 1)) <= 50_000
    assert 20_000 <= n_params(build_model("mlp_tiny", 10, 1, input_shape=(1, 28, 28))) <= 30_000
    assert 0.8e6 <= n_params(build_model("cnn_large", 10, 1)) <= 1.2e6


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 11, 9)])
def test_small_models_run_on_any_size_from_8(name, shape):
    model = build_model(name, 7, in_channels=shape[0], input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_small_models_reject_unusable_inputs():
    with pytest.raises(ValueError, match="input_shape"):
        build_model("mlp", 10, 1)
    mlp = build_model("mlp_tiny", 10, 1, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        mlp(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="8×8"):
        build_model("cnn_small", 10, 1)(torch.randn(2, 1, 6, 6))
    with pytest.raises(ValueError, match="dropout"):
        build_model("mlp", 10, 1, input_shape=(1, 8, 8), dropout=1.5)


def test_small_cnn_trains_a_step():
    model = build_model("cnn_small", 3, 1)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- ImageNet


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_models_run_at_64(name):
    model = build_model(name, 10, in_channels=1, input_shape=(1, 64, 64)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "count"),
    [  # published torchvision parameter counts at 1000 classes
        ("imagenet_resnet18", 11_689_512),
        ("imagenet_resnet34", 21_797_672),
        ("imagenet_resnet50", 25_557_032),
        ("imagenet_mobilenetv2", 3_504_872),
    ],
)
def test_torchvision_param_counts(name, count):
    assert n_params(build_model(name, 1000)) == count


def test_missing_torchvision_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="'imagenet_resnet18' needs torchvision"):
        build_model("imagenet_resnet18", 10)
    build_model("imagenet_mobilenetv1", 10)  # our own code: no torchvision needed


def test_missing_timm_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="needs the optional package timm"):
        build_model("timm:resnet18", 10)
    with pytest.raises(ValueError, match="timm model name"):
        build_model("timm:", 10)


def test_timm_model_builds_when_installed(monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_model("timm:resnet18", 10, in_channels=1, input_shape=(1, 32, 32)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# ---------------------------------------------------------------- checkpoints


def _trained_like(name="resnet8", classes=100):
    torch.manual_seed(0)
    model = build_model(name, classes)
    deterministic_fill(model)
    return model.eval()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mdistiller_checkpoint_round_trip_loads_strict(tmp_path):
    teacher = _trained_like()
    opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    path = tmp_path / "resnet8_best.pth"
    torch.save(
        {
            "epoch": 240,
            "model": teacher.state_dict(),
            "best_acc": torch.tensor(72.3),
            "optimizer": opt.state_dict(),
        },
        path,
    )
    fresh = build_model("resnet8", 100).eval()
    assert not _same_weights(fresh, teacher)
    load_checkpoint_weights(fresh, path)
    assert _same_weights(fresh, teacher)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), teacher(x), rtol=0, atol=0)
    # the same file through build_model(pretrained=...)
    assert _same_weights(build_model("resnet8", 100, pretrained=str(path)), teacher)


@pytest.mark.parametrize("container", [None, "state_dict", "student", "model_state_dict"])
def test_other_checkpoint_layouts(tmp_path, container):
    teacher = _trained_like()
    sd = teacher.state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(sd if container is None else {container: sd, "epoch": 3}, path)
    fresh = build_model("resnet8", 100)
    load_checkpoint_weights(fresh, path)
    assert _same_weights(fresh, teacher)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    teacher = _trained_like()
    path = tmp_path / "ddp.pth"
    torch.save({"model": {prefix + k: v for k, v in teacher.state_dict().items()}}, path)
    fresh = build_model("resnet8", 100)
    load_checkpoint_weights(fresh, path)
    assert _same_weights(fresh, teacher)


def test_loading_into_a_wrapped_model(tmp_path):
    teacher = _trained_like()
    path = tmp_path / "plain.pth"
    torch.save(teacher.state_dict(), path)
    wrapped = nn.DataParallel(build_model("resnet8", 100))
    load_checkpoint_weights(wrapped, path)
    assert _same_weights(wrapped.module, teacher)


def test_class_count_mismatch_names_the_shapes(tmp_path):
    path = tmp_path / "c100.pth"
    torch.save({"model": _trained_like(classes=100).state_dict()}, path)
    with pytest.raises(ValueError) as err:
        load_checkpoint_weights(build_model("resnet8", 10), path)
    msg = str(err.value)
    assert "fc.weight: checkpoint [100, 64] vs model [10, 64]" in msg
    assert "fc.bias: checkpoint [100] vs model [10]" in msg
    assert "class count: checkpoint 100 vs model 10" in msg
    # shapes are checked even when not strict
    with pytest.raises(ValueError, match="shape mismatch"):
        load_checkpoint_weights(build_model("resnet8", 10), path, strict=False)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = _trained_like().state_dict()
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    model = build_model("resnet8", 100)
    with pytest.raises(
        ValueError, match=r"1 missing key\(s\).*fc\.bias.*1 unexpected key\(s\).*extra\.weight"
    ):
        load_checkpoint_weights(model, path)
    before = model.fc.bias.clone()
    load_checkpoint_weights(model, path, strict=False)
    assert torch.equal(model.fc.bias, before) and torch.equal(model.fc.weight, sd["fc.weight"])


def test_missing_num_batches_tracked_is_tolerated():
    sd = {
        k: v
        for k, v in _trained_like().state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    model = build_model("resnet8", 100)
    load_checkpoint_weights(model, {"model": sd})
    assert torch.equal(model.bn1.running_var, sd["bn1.running_var"])


def test_wrong_architecture_is_a_value_error():
    with pytest.raises(ValueError, match="missing key"):
        load_checkpoint_weights(build_model("resnet14", 100), _trained_like().state_dict())


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "teacher.pth"
    with pytest.raises(FileNotFoundError, match="teacher.pth"):
        load_checkpoint_weights(build_model("resnet8", 100), path)
    with pytest.raises(FileNotFoundError, match="teacher.pth"):
        build_model("resnet8", 100, pretrained=path)


def test_unreadable_or_odd_checkpoints_are_value_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint_weights(build_model("resnet8", 100), garbage)
    no_sd = tmp_path / "no_sd.pth"
    torch.save({"epoch": 3, "acc": 0.5}, no_sd)
    with pytest.raises(ValueError, match="neither a state dict"):
        load_checkpoint_weights(build_model("resnet8", 100), no_sd)


class _Args:  # a pickled Python object, as some training scripts store alongside the weights
    lr = 0.1


def test_pickled_objects_need_weights_only_false(tmp_path):
    teacher = _trained_like()
    path = tmp_path / "with_args.pth"
    torch.save({"model": teacher.state_dict(), "args": _Args()}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        load_checkpoint_weights(build_model("resnet8", 100), path)
    fresh = build_model("resnet8", 100)
    load_checkpoint_weights(fresh, path, weights_only=False)
    assert _same_weights(fresh, teacher)


def test_empty_file_is_a_value_error(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint_weights(build_model("resnet8", 100), empty)


def test_small_cnn_pool_grid_keeps_left_and_right_apart() -> None:
    """Global pooling cannot tell an image from its left-right swap; a (1, 2) grid can."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 56)
    swapped = torch.cat([x[..., 28:], x[..., :28]], dim=-1)
    gap = build_model("cnn_small", num_classes=100, in_channels=1).eval()
    grid = build_model("cnn_small", num_classes=100, in_channels=1, pool_grid=[1, 2]).eval()
    with torch.no_grad():
        f_gap = gap.pool(gap.features(x)).flatten(1)
        f_gap_swapped = gap.pool(gap.features(swapped)).flatten(1)
        f_grid = grid.pool(grid.features(x)).flatten(1)
        f_grid_swapped = grid.pool(grid.features(swapped)).flatten(1)
        assert grid(x).shape == (3, 100)
    # the (1, 2) grid's features are the halves' features, in order; the swap swaps them
    assert f_grid.shape == (3, 2 * 64)
    halves = f_grid.view(3, 64, 2)
    halves_swapped = f_grid_swapped.view(3, 64, 2)
    assert not torch.allclose(halves, halves_swapped, atol=1e-3)
    # interior features are translation-equivariant; only the seam and borders differ under GAP
    assert (f_gap - f_gap_swapped).abs().max() < (halves - halves_swapped).abs().max()
    with pytest.raises(ValueError, match="pool_grid"):
        build_model("cnn_small", num_classes=10, in_channels=1, pool_grid=[0, 2])
