"""Image-file data sets decoded per item: ImageNet, generic ImageFolder trees and Tiny-ImageNet.

Layouts::

    imagenet / imagefolder:  root/train/<class>/<image>   root/val/<class>/<image>
                             (imagefolder also accepts root/test/<class>/ instead of val)
    tiny_imagenet:           root/train/<wnid>/images/*.JPEG
                             root/val/images/*.JPEG + root/val/val_annotations.txt
                             (root may also be the folder that holds tiny-imagenet-200/)

Items are ``(uint8 tensor 3×S×S, label)``. Train-time ImageNet augmentation (RandomResizedCrop,
scale 0.08–1, ratio 3/4–4/3, bilinear, plus a horizontal flip) is drawn from a per-item seed
that the loader's sampler supplies, so an epoch's crops depend only on ``(seed, epoch)`` — not on
the number of workers. Evaluation resizes the shorter side to ``round(S / 0.875)`` (256 for 224)
and centre-crops S; Tiny-ImageNet images are only resized (when ``S != 64``) and get the
batch-level crop+flip of :class:`lud.data.augment.BatchTransform` instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .bundle import default_roots, missing_data_error

__all__ = ["IMAGE_EXTENSIONS", "ImageFileDataset", "load_image_folder", "load_tiny_imagenet"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EVAL_CROP_FRACTION = 0.875  # 224 / 256, the usual ImageNet evaluation crop

_VAL_HELP = (
    "ImageNet's val images must be sorted into class folders (root/val/<wnid>/*.JPEG), like train. "
    "The official ILSVRC2012_img_val.tar is flat: move each image into the folder of its "
    "ground-truth wnid first (e.g. with the widely used valprep.sh script)."
)


class ImageFileDataset(Dataset):
    """Decode-on-access image files as uint8 ``3×S×S`` tensors.

    Args:
        samples: ``(path, label)`` pairs.
        image_size: output side ``S``.
        random_crop: train-time RandomResizedCrop + horizontal flip; otherwise the eval policy.
        eval_policy: ``"center_crop"`` (resize shorter side, centre crop) or ``"resize"`` (plain
            resize to S×S, a no-op when the image already has that size).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        image_size: int,
        *,
        random_crop: bool,
        eval_policy: str,
    ) -> None:
        if eval_policy not in ("center_crop", "resize"):
            raise ValueError(f"eval_policy must be 'center_crop' or 'resize', got {eval_policy!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.random_crop = bool(random_crop)
        self.eval_policy = eval_policy

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"ImageFileDataset(n={len(self)}, image_size={self.image_size}, "
            f"random_crop={self.random_crop}, eval_policy={self.eval_policy!r})"
        )

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def select(self, indices: Sequence[int] | np.ndarray, train: bool = True) -> ImageFileDataset:
        """Subset; ``train=False`` switches off the random crop (for a validation carve-out)."""
        return ImageFileDataset(
            [self.samples[int(i)] for i in indices],
            self.image_size,
            random_crop=self.random_crop and train,
            eval_policy=self.eval_policy,
        )

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, int]:
        # The loader's sampler passes (index, seed); a plain int draws fresh OS entropy.
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[int(index)]
        from PIL import Image  # lazy: only file data sets need PIL

        with Image.open(path) as im:
            img = im.convert("RGB")
        img = self._transform(img, np.random.default_rng(seed))
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), label

    def _transform(self, img, rng: np.random.Generator):
        from PIL import Image

        s = self.image_size
        if self.random_crop:
            top, left, h, w = random_resized_crop_box(img.height, img.width, rng)
            img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            return img
        if self.eval_policy == "resize":
            return img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
        short = round(s / EVAL_CROP_FRACTION)
        if img.width <= img.height:
            new_w, new_h = short, int(short * img.height / img.width)
        else:
            new_w, new_h = int(short * img.width / img.height), short
        img = img.resize((new_w, new_h), Image.BILINEAR)
        top, left = round((new_h - s) / 2.0), round((new_w - s) / 2.0)
        return img.crop((left, top, left + s, top + s))


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop (10 tries, then centred)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _scan(folder: Path, class_index: dict[str, int], nested: str = "") -> list[tuple[str, int]]:
    samples: list[tuple[str, int]] = []
    for cls in _class_dirs(folder):
        if cls not in class_index:
            raise ValueError(f"{folder / cls}: class folder not present in the training split")
        samples += [(str(p), class_index[cls]) for p in _images_in(folder / cls / nested)]
    return samples


def load_image_folder(
    name: str, root: str | os.PathLike[str] | None, image_size: int, random_crop: bool
) -> tuple[ImageFileDataset, ImageFileDataset, list[str]]:
    """``(train, test, class_names)`` of an ``imagenet``/``imagefolder`` tree."""
    eval_dirs = ("val",) if name == "imagenet" else ("val", "test")
    searched = default_roots(name, root)
    base = next((b for b in searched if (b / "train").is_dir()), None)
    if base is None:
        how = (
            "ImageNet cannot be downloaded automatically: obtain ILSVRC2012 from image-net.org and "
            "extract train/ and val/ into <root>. " + _VAL_HELP
            if name == "imagenet"
            else "arrange your images as <root>/train/<class>/*.png and <root>/val/<class>/*.png."
        )
        raise missing_data_error(
            name,
            searched,
            f"<root>/train/<class>/<images> and <root>/{eval_dirs[0]}/<class>/<images>",
            how,
        )
    classes = _class_dirs(base / "train")
    if not classes:
        raise FileNotFoundError(
            f"{base / 'train'}: no class folders. Expected train/<class>/<images>."
        )
    eval_dir = next((base / d for d in eval_dirs if (base / d).is_dir()), None)
    if eval_dir is None:
        raise FileNotFoundError(
            f"{base}: found train/ but no {' or '.join(d + '/' for d in eval_dirs)} folder "
            "for evaluation. "
            + (_VAL_HELP if name == "imagenet" else "Expected <root>/val/<class>/<images>.")
        )
    if not _class_dirs(eval_dir):
        flat = len(_images_in(eval_dir))
        raise FileNotFoundError(
            f"{eval_dir}: no class folders ({flat} loose image files found). " + _VAL_HELP
        )
    index = {c: i for i, c in enumerate(classes)}
    train, test = _scan(base / "train", index), _scan(eval_dir, index)
    for split, s in (("train", train), (eval_dir.name, test)):
        if not s:
            raise FileNotFoundError(
                f"{base / split}: no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
    return (
        ImageFileDataset(train, image_size, random_crop=random_crop, eval_policy="center_crop"),
        ImageFileDataset(test, image_size, random_crop=False, eval_policy="center_crop"),
        classes,
    )


def load_tiny_imagenet(
    root: str | os.PathLike[str] | None, image_size: int, random_crop: bool
) -> tuple[ImageFileDataset, ImageFileDataset, list[str]]:
    """``(train, val-as-test, class_names)`` of Tiny-ImageNet-200 (its test has no labels)."""
    searched: list[Path] = []
    base = None
    for b in default_roots("tiny_imagenet", root):
        for cand in (b, b / "tiny-imagenet-200"):
            searched.append(cand)
            if (cand / "train").is_dir() and (cand / "val" / "val_annotations.txt").is_file():
                base = cand
                break
        if base is not None:
            break
    if base is None:
        raise missing_data_error(
            "tiny_imagenet",
            searched,
            "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt",
            "download tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) "
            "on a "
            "machine with internet and unzip it into <root>.",
        )
    wnids = _class_dirs(base / "train")
    index = {w: i for i, w in enumerate(wnids)}
    train = _scan(base / "train", index, nested="images")
    test: list[tuple[str, int]] = []
    ann = base / "val" / "val_annotations.txt"
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise ValueError(
                f"{ann}:{lineno}: expected '<file>\\t<wnid>\\t...' with a training wnid, "
                f"got {line!r}"
            )
        test.append((str(base / "val" / "images" / parts[0]), index[parts[1]]))
    missing = [p for p, _ in test if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{ann} lists {len(missing)} missing image(s), e.g. {missing[:3]}")
    if not train:
        raise FileNotFoundError(f"{base / 'train'}: no images under train/<wnid>/images/")
    names = list(wnids)
    words = base / "words.txt"
    if words.is_file():  # wnid \t "name, synonym, ..." -> first name
        lookup = dict(ln.split("\t", 1) for ln in words.read_text().splitlines() if "\t" in ln)
        names = [lookup.get(w, w).split(",")[0].strip() for w in wnids]
    return (
        ImageFileDataset(train, image_size, random_crop=random_crop, eval_policy="resize"),
        ImageFileDataset(test, image_size, random_crop=False, eval_policy="resize"),
        names,
    )
