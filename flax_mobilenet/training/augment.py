"""The host's share of classification augmentation, in TF ops with stateless randomness (deterministic per example
seed): RandomResizedCrop, drawn as a window and decoded from the JPEG's bytes only inside that window.

Decoding is most of the host's work, so a JPEG is decoded inside the crop window only (libjpeg skips the rest), and
when that window is at least 2/4/8 x the output size, downscaled in the DCT domain by that ratio while decoding
(still >= the output size, so the final resize loses nothing).  Other files (PNG, ...) and in-memory arrays are
decoded whole, then cropped.  The per-example pixel math (flip, AutoAugment / RandAugment, random erasing) runs on
the accelerator: `device_augment.py`.
"""
from __future__ import annotations

import functools
import math

import tensorflow as tf

from . import resample

Seed = tf.Tensor  # shape [2] int64, for tf.random.stateless_*
DCT_RATIOS = (8, 4, 2)  # libjpeg's scaled decoding (1/8 .. 1/2), largest first
# libjpeg's accurate integer IDCT (its default): INTEGER_FAST measured no faster here (SIMD) and is less exact
DCT_METHOD = "INTEGER_ACCURATE"


def uniform(seed: Seed, shape=(), low=0.0, high=1.0) -> tf.Tensor:
    """Uniform floats in [low, high), stateless (both augmentation modules draw with this)."""
    return tf.random.stateless_uniform(shape, seed, low, high)


def _randint_below(seed: Seed, high: tf.Tensor) -> tf.Tensor:
    """Uniform integer in [0, high), from one uniform float."""
    return tf.minimum(tf.cast(uniform(seed) * tf.cast(high, tf.float32), tf.int32), high - 1)


def crop_window(height: tf.Tensor, width: tf.Tensor, scale_min: float, seed: Seed, attempts: int = 10) -> tf.Tensor:
    """torchvision RandomResizedCrop.get_params(scale=(scale_min, 1), ratio=(3/4, 4/3)): 10 tries, then the largest
    center crop with the ratio clamped into [3/4, 4/3]; [top, left, h, w] int32."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = uniform(seeds[0], (attempts,), scale_min, 1.0) * h_f * w_f
    ratio = tf.exp(uniform(seeds[1], (attempts,), math.log(3 / 4), math.log(4 / 3)))
    crop_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    in_ratio = w_f / h_f
    fallback_w = tf.where(in_ratio > 4 / 3, tf.cast(tf.round(h_f * 4 / 3), tf.int32), width)
    fallback_h = tf.where(in_ratio < 3 / 4, tf.cast(tf.round(w_f / (3 / 4)), tf.int32), height)
    found = tf.reduce_any(fits)
    w = tf.where(found, crop_w[first], fallback_w)
    h = tf.where(found, crop_h[first], fallback_h)
    top = tf.where(found, _randint_below(seeds[2], height - h + 1), (height - h) // 2)
    left = tf.where(found, _randint_below(seeds[3], width - w + 1), (width - w) // 2)
    return tf.stack([top, left, h, w])


def is_jpeg(contents: tf.Tensor) -> tf.Tensor:
    return tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")


def _decode_jpeg_window(contents: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
    """The window of a JPEG, DCT-downscaled by the largest ratio that keeps it >= size x size."""
    def decode(ratio: int):
        return lambda: tf.io.decode_and_crop_jpeg(contents, window // ratio if ratio > 1 else window, channels=3,
                                                  ratio=ratio, dct_method=DCT_METHOD)

    smaller_side = tf.minimum(window[2], window[3])
    branch = tf.reduce_sum(tf.cast(smaller_side // tf.constant(DCT_RATIOS) >= size, tf.int32))  # 0: ratio 1 .. 3: 8
    return tf.switch_case(branch, [decode(1), *(decode(r) for r in reversed(DCT_RATIOS))])


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Any image file's bytes -> uint8 RGB (the first frame of an animation)."""
    return tf.io.decode_image(contents, channels=3, expand_animations=False)


def pillow_resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """uint8 antialiased bilinear to height x width as PIL's resize computes it (`resample.py`: 3-4x faster than
    PIL, 12x than TF's antialiased resize, and it releases the GIL)."""
    resized = tf.numpy_function(functools.partial(resample.resize_bilinear, height=height, width=width), [image],
                                tf.uint8, stateful=False)
    return tf.ensure_shape(resized, (height, width, 3))


def _resize(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
    """uint8 bilinear to size x size: antialiased as PIL's resize computes it, which is what torchvision's
    RandomResizedCrop runs on PIL images (its ImageNet recipes' path), or plain (big_vision's inception crop; after
    the DCT-domain downscale the remaining factor is below 2 on the shorter side, so little aliasing is left)."""
    if antialias:
        return pillow_resize(image, size, size)
    resized = tf.image.resize(image, (size, size), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def random_resized_crop(image: tf.Tensor, size: int, scale_min: float, seed: Seed, antialias: bool = True
                        ) -> tf.Tensor:
    """RandomResizedCrop of an image given as encoded bytes (a scalar string: JPEGs decoded inside the window) or
    as a uint8 (H, W, C) array; uint8 (size, size, 3) out."""
    if image.dtype != tf.string:
        window = crop_window(tf.shape(image)[0], tf.shape(image)[1], scale_min, seed)
        return _resize(_crop(image, window), size, antialias)

    def from_jpeg():
        shape = tf.io.extract_jpeg_shape(image)
        return _decode_jpeg_window(image, crop_window(shape[0], shape[1], scale_min, seed), size)

    def from_other():
        decoded = decode_image(image)
        return _crop(decoded, crop_window(tf.shape(decoded)[0], tf.shape(decoded)[1], scale_min, seed))

    return _resize(tf.cond(is_jpeg(image), from_jpeg, from_other), size, antialias)


def resize_whole(image: tf.Tensor, size: int) -> tf.Tensor:
    """No crop: the whole image (bytes or array) resized to size x size."""
    if image.dtype == tf.string:
        image = decode_image(image)
    return _resize(image, size, antialias=True)


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    top, left, h, w = tf.unstack(window)
    return image[top:top + h, left:left + w]

