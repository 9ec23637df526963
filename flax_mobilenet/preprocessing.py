"""Image loading, the eval transform of torchvision/timm weights and top-k readout, in numpy + Pillow only.

No torch, TF or even JAX here: the same code feeds any backend (a jit-ed `model.apply`, an AOT
or exported function).  `preprocess_for(image, weights_info(name))` reproduces the eval transform of
the name's reference weights on a PIL image (torchvision's Resize/CenterCrop/Normalize or timm's
create_transform, to 1e-5, HWC instead of CHW), so converted weights keep their accuracy.
"""
from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .weights import IMAGENET_MEAN, IMAGENET_STD, WeightsInfo

RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}



@functools.cache
def _labels() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision's list)."""
    return list(_labels())


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB image, upright as a viewer shows it (EXIF orientation applied).

    Raises ValueError naming `path` for a missing, unreadable, corrupt or non-image file, so a
    caller classifying many files can report it in one line and go on.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later in resize
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode the image (corrupt or truncated?): {error}") from None
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale: Pillow's convert clips to 0..255 (a white picture); scale it down instead.
        levels = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(levels)
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the direct P -> RGB conversion warns about this case
    # Transparency is dropped, not composited, as torchvision's and timm's dataset loaders do.
    return image.convert("RGB")


def preprocess(image: Image.Image, image_size: int = 224, resize_size: int | None = None,
               interpolation: str = "bilinear", mean: tuple[float, ...] = IMAGENET_MEAN,
               std: tuple[float, ...] = IMAGENET_STD, center_crop: bool = True) -> np.ndarray:
    """Resize of the shorter side, center crop, normalize: torchvision's and timm's eval transform.

    Returns (image_size, image_size, 3) float32 NHWC-ready. `resize_size` defaults to
    round(image_size * 256 / 224), the usual 0.875 crop ratio (256 at 224).  With `center_crop=False`
    (torchvision's SemanticSegmentation) the resized image is returned whole, (H, W, 3).
    """
    if resize_size is None:
        resize_size = round(image_size * 256 / 224)
    if resize_size < image_size:
        raise ValueError(f"resize_size {resize_size} is smaller than the crop image_size {image_size}")
    image = image.convert("RGB")
    width, height = image.size
    short, long = sorted((width, height))
    # torchvision's _compute_resized_output_size: the long side is truncated, not rounded.
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_size != image.size:
        image = image.resize(new_size, RESAMPLING[interpolation])
    width, height = image.size
    if center_crop:
        top = int(round((height - image_size) / 2.0))
        left = int(round((width - image_size) / 2.0))
        image = image.crop((left, top, left + image_size, top + image_size))
    pixels = np.asarray(image, dtype=np.float32)
    # Same float32 operations as ToTensor (x / 255) then Normalize ((x - mean) / std).
    pixels = pixels / np.float32(255)
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_for(image: Image.Image, weights: WeightsInfo) -> np.ndarray:
    """`preprocess` with the eval transform a model's weights expect (`flax_mobilenet.weights_info(name)`).

    `resize_mode='fixed'` (torchvision's detection transform): the [0, 1] image is resized to crop x crop with
    torch's bilinear interpolate (no antialias, aspect not kept), then normalized."""
    if weights.resize_mode == "fixed":
        from .heads.resize import resize_bilinear

        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
        pixels = np.asarray(resize_bilinear(pixels[None], (weights.crop_size, weights.crop_size)))[0]
        return (pixels - np.asarray(weights.mean, np.float32)) / np.asarray(weights.std, np.float32)
    return preprocess(image, weights.crop_size, weights.resize_size, weights.interpolation, weights.mean, weights.std,
                      weights.center_crop)


def classify(logits_fn: Callable[[np.ndarray], Any], images: np.ndarray, batch_size: int,
             top: int = 5) -> list[list[tuple[int, float]]]:
    """The `top` (class index, softmax probability) pairs of each image, best first.

    `logits_fn` maps a (batch_size, H, W, 3) float32 batch to logits.  The last batch is
    zero-padded to `batch_size`, so a jit-compiled function compiles one shape only.
    """
    images = np.asarray(images, np.float32)
    results = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]), np.float32)])
        logits = np.asarray(logits_fn(batch), np.float32)[:count]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
        results += [[(int(i), float(p[i])) for i in row] for row, p in zip(best, probabilities)]
    return results
