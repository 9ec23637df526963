"""Image loading, the eval transform of torchvision/timm weights, top-k readout, YOLO's letterbox: numpy + Pillow only.

No torch, TF or even JAX here: the same code feeds any backend (a jit-ed `model.apply`, an AOT
or exported function).  `preprocess_for(image, weights_info(name))` reproduces the eval transform of
the name's reference weights on a PIL image (torchvision's Resize/CenterCrop/Normalize or timm's
create_transform, to 1e-5, HWC instead of CHW), so converted weights keep their accuracy.
`letterbox` is ultralytics' YOLO input transform (cv2 INTER_LINEAR resize in numpy, 114 padding) and
`scale_boxes_back` maps detections on its output back to the original image.
"""
from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Any, Callable, NamedTuple

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
    torch's bilinear interpolate (no antialias, aspect not kept), then normalized.  'letterbox' (ultralytics):
    `letterbox` to crop x crop, normalized (see `detection_input` for the boxes' way back)."""
    return detection_input(image, weights)[0] if weights.resize_mode != "shorter" else preprocess(
        image, weights.crop_size, weights.resize_size, weights.interpolation, weights.mean, weights.std,
        weights.center_crop)


def detection_input(image: Image.Image, weights: WeightsInfo,
                    rect: bool = False) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """A detector's input for `image` (H, W, 3 float32, normalized) and the map of xyxy boxes from its pixels
    back to the image's (clipped to it).  'letterbox' weights: ultralytics' `LetterBox` to crop_size, `rect`
    padding only to the next multiple of 32 (its predictor's minimal rectangle: bus.jpg -> 640x480); 'fixed'
    weights (torchvision's SSD): resized to crop x crop, aspect not kept."""
    mean, std = np.asarray(weights.mean, np.float32), np.asarray(weights.std, np.float32)
    if weights.resize_mode == "letterbox":
        pixels, info = letterbox(image, weights.crop_size, auto=rect)
        return ((pixels.astype(np.float32) / np.float32(255) - mean) / std,
                lambda boxes: scale_boxes_back(boxes, info))
    if weights.resize_mode != "fixed":
        raise ValueError(f"detection_input takes 'letterbox' or 'fixed' weights, got resize_mode "
                         f"{weights.resize_mode!r}")
    from .heads.resize import resize_bilinear

    size = weights.crop_size
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    pixels = np.asarray(resize_bilinear(pixels[None], (size, size)))[0]
    scale = np.array([image.width / size, image.height / size] * 2, np.float32)

    def back(boxes: np.ndarray) -> np.ndarray:
        limits = np.array([image.width, image.height] * 2, np.float32)
        return np.clip(np.asarray(boxes, np.float32) * scale, 0, limits)

    return (pixels - mean) / std, back


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


# --- YOLO letterbox (ultralytics' `LetterBox`) --------------------------------------------------------------------

LETTERBOX_PAD_VALUE = 114
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: bilinear weights in 1/2048


class LetterboxInfo(NamedTuple):
    """How `letterbox` placed the image: the float scale `ratio` (x, y) (ultralytics' `ratio`, both r), the padding
    `pad` (left, top) in pixels, the resized image's size `unpadded` (w, h) and the input's size `original` (w, h).
    The resized image occupies [left, left + w) x [top, top + h) of the letterboxed one."""
    ratio: tuple[float, float]
    pad: tuple[int, int]
    unpadded: tuple[int, int]
    original: tuple[int, int]


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR's taps along one axis: first source index, second (clamped), and the two fixed-point
    weights (summing to 2048).  Half-pixel centres, src = (dst + 0.5) * scale - 0.5 in float32 (OpenCV computes it
    in double and stores a float), weights rounded to 1/2048; outside the image the edge pixel, weight 2048."""
    scale = src / dst
    position = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    frac = position - first.astype(np.float32)
    low, high = first < 0, first >= src - 1
    frac[low | high] = 0
    first = np.clip(first, 0, src - 1)
    second = np.minimum(first + 1, src - 1)
    one = np.float32(1 << _COEF_BITS)
    w0 = np.rint((np.float32(1) - frac) * one).astype(np.int32)
    w1 = np.rint(frac * one).astype(np.int32)
    return first, second, w0, w1


def resize_linear_uint8(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) uint8 -> (h, w[, C]) uint8, `size` = (w, h), with `cv2.resize(..., INTER_LINEAR)`'s semantics:
    bilinear on half-pixel centres, no antialiasing (downscaling samples, it does not average), OpenCV's
    fixed-point arithmetic (weights in 1/2048; the horizontal pass exact in integers, the vertical one rounded as
    its SIMD kernel does).  Agrees with OpenCV to within 1 grey level (OpenCV's scalar tail rounds slightly
    differently from its vector body)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"resize_linear_uint8 takes uint8 pixels, got {pixels.dtype}")
    squeeze = pixels.ndim == 2
    if squeeze:
        pixels = pixels[..., None]
    height, width = pixels.shape[:2]
    new_w, new_h = int(size[0]), int(size[1])
    if new_w < 1 or new_h < 1:
        raise ValueError(f"cannot resize to {size}")
    x0, x1, a0, a1 = _linear_taps(width, new_w)
    y0, y1, b0, b1 = _linear_taps(height, new_h)
    rows = np.union1d(y0, y1)  # horizontal pass only on the source rows the output reads
    source = pixels[rows].astype(np.int32)
    horizontal = source[:, x0] * a0[None, :, None] + source[:, x1] * a1[None, :, None]  # exact: <= 255 * 2048
    where = np.searchsorted(rows, np.stack([y0, y1]))
    top, bottom = horizontal[where[0]] >> 4, horizontal[where[1]] >> 4
    # OpenCV's vector kernel: ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16), then + 2 >> 2 (round to 8 bits).
    value = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    out = np.clip((value + 2) >> 2, 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


def letterbox(image: Image.Image | np.ndarray, new_shape: int | tuple[int, int] = 640, auto: bool = False,
              scaleup: bool = True, stride: int = 32, center: bool = True,
              pad_value: int = LETTERBOX_PAD_VALUE) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio and pad, as ultralytics' `LetterBox` (the YOLO input transform).

    `image`: a PIL image (converted to RGB) or an (H, W, C) / (H, W) uint8 array (any channel order: each channel
    is resized alike).  `new_shape`: (height, width) or an int for a square.  r = min(new_h / h, new_w / w), at
    most 1 if not `scaleup` (ultralytics' val); the image is resized to (round(w * r), round(h * r)) (at least 1)
    with OpenCV's INTER_LINEAR semantics (`resize_linear_uint8`, within 1 grey level of cv2); `auto` pads only
    to the next multiple of `stride` (ultralytics' predictor for same-shape PyTorch batches: bus.jpg -> 640x480,
    zidane.jpg -> 384x640), else to `new_shape`; `center` splits the padding as top = round(dh - 0.1), bottom =
    round(dh + 0.1) (dh half the padding; left/right alike), else all of it right and bottom; colour `pad_value`
    (114).  Returns the uint8 (H', W', C) array and its `LetterboxInfo`.  Divide by 255 for the network.
    """
    if isinstance(image, Image.Image):
        pixels = np.asarray(_to_rgb(image) if image.mode != "RGB" else image)
    else:
        pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"letterbox takes a PIL image or an (H, W[, C]) uint8 array, got {pixels.dtype} "
                         f"{pixels.shape}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width = pixels.shape[:2]
    new_h, new_w = (new_shape, new_shape) if isinstance(new_shape, int) else (int(new_shape[0]), int(new_shape[1]))
    r = min(new_h / height, new_w / width)
    if not scaleup:
        r = min(r, 1.0)
    # Python's round (half to even), as ultralytics.
    unpad_w, unpad_h = max(round(width * r), 1), max(round(height * r), 1)
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if center:
        dw, dh = dw / 2, dh / 2
        top, bottom = round(dh - 0.1), round(dh + 0.1)
        left, right = round(dw - 0.1), round(dw + 0.1)
    else:
        top, bottom = 0, round(dh + 0.1)
        left, right = 0, round(dw + 0.1)
    if (unpad_w, unpad_h) != (width, height):
        pixels = resize_linear_uint8(pixels, (unpad_w, unpad_h))
    out = np.full((unpad_h + top + bottom, unpad_w + left + right, pixels.shape[2]), pad_value, np.uint8)
    out[top:top + unpad_h, left:left + unpad_w] = pixels
    return out, LetterboxInfo((r, r), (int(left), int(top)), (unpad_w, unpad_h), (width, height))


def scale_boxes_back(boxes: np.ndarray, info: LetterboxInfo, original_size: tuple[int, int] | None = None,
                     use_ratio: bool = False) -> np.ndarray:
    """xyxy boxes (..., 4) in the letterboxed input's pixels -> the original image's pixels, clipped to it:
    ultralytics' `scale_boxes` (subtract the padding, divide by the gain, clip to [0, w] x [0, h]).

    `original_size`: the original image's (height, width) (default: `info.original`).  The gain per axis is
    unpadded / original, as ultralytics' predictor recomputes it (`scale_boxes` without `ratio_pad`); with
    `use_ratio` it is the letterbox's float ratio r, as its validator passes it (`ratio_pad`).  float32, with
    ultralytics' float32 operations (so equal to it bit for bit).
    """
    boxes = np.array(boxes, dtype=np.float32, copy=True)
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (..., 4) xyxy, got shape {boxes.shape}")
    if original_size is None:
        height, width = info.original[1], info.original[0]
    else:
        height, width = int(original_size[0]), int(original_size[1])
    if use_ratio:
        gain_x, gain_y = info.ratio
    else:
        gain_x, gain_y = info.unpadded[0] / width, info.unpadded[1] / height
    left, top = info.pad
    boxes[..., 0::2] = (boxes[..., 0::2] - np.float32(left)) / np.float32(gain_x)
    boxes[..., 1::2] = (boxes[..., 1::2] - np.float32(top)) / np.float32(gain_y)
    boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, np.float32(width))
    boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, np.float32(height))
    return boxes
