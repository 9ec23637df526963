"""Train-time augmentations in TF ops with stateless randomness (deterministic per example seed).

Semantics follow torchvision's transforms: RandomResizedCrop, RandomErasing, and AutoAugment's ImageNet policy
and RandAugment over one shared set of image operations (PIL's definitions, on uint8 RGB).
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

Seed = tf.Tensor  # shape [2] int64, for tf.random.stateless_*


def uniform(seed: Seed, shape=(), low=0.0, high=1.0) -> tf.Tensor:
    """Uniform floats in [low, high), stateless (both augmentation modules draw with this)."""
    return tf.random.stateless_uniform(shape, seed, low, high)


def _randint_below(seed: Seed, high: tf.Tensor) -> tf.Tensor:
    """Uniform integer in [0, high), from one uniform float."""
    return tf.minimum(tf.cast(uniform(seed) * tf.cast(high, tf.float32), tf.int32), high - 1)


def random_resized_crop(image: tf.Tensor, size: int, scale_min: float, seed: Seed,
                        attempts: int = 10) -> tf.Tensor:
    """torchvision RandomResizedCrop(scale=(scale_min, 1), ratio=(3/4, 4/3)): 10 tries, then a center crop."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = uniform(seeds[0], (attempts,), scale_min, 1.0) * h_f * w_f
    ratio = tf.exp(uniform(seeds[1], (attempts,), math.log(3 / 4), math.log(4 / 3)))
    crop_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    # fallback: the largest center crop with the ratio clamped into [3/4, 4/3]
    in_ratio = w_f / h_f
    fallback_w = tf.where(in_ratio < 3 / 4, width, tf.where(in_ratio > 4 / 3,
                                                            tf.cast(tf.round(h_f * 4 / 3), tf.int32), width))
    fallback_h = tf.where(in_ratio < 3 / 4, tf.cast(tf.round(w_f / (3 / 4)), tf.int32),
                          tf.where(in_ratio > 4 / 3, height, height))
    found = tf.reduce_any(fits)
    w = tf.where(found, crop_w[first], fallback_w)
    h = tf.where(found, crop_h[first], fallback_h)
    top = tf.where(found, _randint_below(seeds[2], height - h + 1), (height - h) // 2)
    left = tf.where(found, _randint_below(seeds[3], width - w + 1), (width - w) // 2)
    crop = image[top:top + h, left:left + w]
    return tf.image.resize(crop, (size, size), method="bilinear", antialias=True)


def random_erasing(image: tf.Tensor, probability: float, seed: Seed, attempts: int = 10) -> tf.Tensor:
    """torchvision RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0) on a normalized image."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    area = tf.cast(height * width, tf.float32) * uniform(seeds[0], (attempts,), 0.02, 0.33)
    ratio = tf.exp(uniform(seeds[1], (attempts,), math.log(0.3), math.log(3.3)))
    h = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (h < height) & (w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h, w = h[first], w[first]
    top, left = _randint_below(seeds[2], height - h + 1), _randint_below(seeds[3], width - w + 1)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (uniform(seeds[4]) < probability) & tf.reduce_any(fits)
    return tf.where(erase & inside[..., None], tf.zeros_like(image), image)


# ----------------------------------------------------------------------------- image operations (uint8 RGB)
def _pil_blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped."""
    mixed = tf.cast(degenerate, tf.float32) + factor * (tf.cast(image, tf.float32) - tf.cast(degenerate, tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(mixed), 0, 255), tf.uint8)


def _affine(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Inverse-map `transform` (8 projective coefficients, output -> input), nearest, fill 0 (torchvision)."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform, tf.float32)[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")
    return out[0]


def _rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    angle = degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # counter-clockwise rotation about the centre, as PIL/torchvision rotate(angle)
    return _affine(image, [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.equalize for one channel."""
    histogram = tf.math.bincount(tf.cast(channel, tf.int32), minlength=256, maxlength=256)
    last_nonzero = tf.gather(histogram, tf.reduce_max(tf.where(histogram > 0)[:, 0]))
    step = (tf.reduce_sum(histogram) - last_nonzero) // 255
    lut = (tf.cumsum(histogram) - histogram + step // 2) // tf.maximum(step, 1)
    lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
    return tf.where(step == 0, channel, tf.gather(lut, tf.cast(channel, tf.int32)))


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    pixels = tf.cast(image, tf.float32)
    low = tf.reduce_min(pixels, axis=(0, 1))
    high = tf.reduce_max(pixels, axis=(0, 1))
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1e-6), 1.0)
    low = tf.where(high > low, low, 0.0)
    return tf.cast(tf.clip_by_value(tf.round((pixels - low) * scale), 0, 255), tf.uint8)


def _sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's SMOOTH kernel on the interior, border pixels unchanged, then blend."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.cast(tf.clip_by_value(tf.round(smooth), 0, 255), tf.uint8)
    degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]], constant_values=True)
    return _pil_blend(tf.where(border, image, degenerate), image, factor)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
    return tf.cast(tf.tile(tf.round(gray), [1, 1, 3]), tf.uint8)


def _op(name: str, image: tf.Tensor, magnitude: tf.Tensor) -> tf.Tensor:
    """One named operation at a signed magnitude (already in the op's units)."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    if name == "Identity":
        return image
    if name == "ShearX":
        return _affine(image, [1.0, magnitude, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    if name == "ShearY":
        return _affine(image, [1.0, 0.0, 0.0, magnitude, 1.0, 0.0, 0.0, 0.0])
    if name == "TranslateX":
        return _affine(image, [1.0, 0.0, -magnitude * width, 0.0, 1.0, 0.0, 0.0, 0.0])
    if name == "TranslateY":
        return _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, -magnitude * height, 0.0, 0.0])
    if name == "Rotate":
        return _rotate(image, magnitude)
    if name == "Brightness":
        return _pil_blend(tf.zeros_like(image), image, 1.0 + magnitude)
    if name == "Color":
        return _pil_blend(_grayscale(image), image, 1.0 + magnitude)
    if name == "Contrast":
        mean = tf.reduce_mean(tf.cast(_grayscale(image)[..., 0], tf.float32))
        return _pil_blend(tf.fill(tf.shape(image), tf.cast(tf.round(mean), tf.uint8)), image, 1.0 + magnitude)
    if name == "Sharpness":
        return _sharpness(image, 1.0 + magnitude)
    if name == "Posterize":
        shift = tf.cast(8 - tf.cast(magnitude, tf.int32), tf.uint8)
        return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)
    if name == "Solarize":
        return tf.where(tf.cast(image, tf.float32) >= magnitude, 255 - image, image)
    if name == "AutoContrast":
        return _autocontrast(image)
    if name == "Equalize":
        return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)
    if name == "Invert":
        return 255 - image
    raise ValueError(f"unknown augmentation op {name}")


SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def magnitude_bins(name: str, num_bins: int) -> np.ndarray:
    """torchvision's magnitude tables (translate as a fraction of the image size: 150/331)."""
    linear = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331, "TranslateY": 150 / 331, "Rotate": 30.0,
              "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
    if name in linear:
        return np.linspace(0.0, linear[name], num_bins)
    if name == "Posterize":
        return 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 4))
    if name == "Solarize":
        return np.linspace(255.0, 0.0, num_bins)
    return np.zeros(num_bins)


RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                   "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
# AutoAugment's ImageNet policy (Cubuk et al. 2019, as in torchvision): (op, probability, magnitude bin of 10)
AUTOAUGMENT_IMAGENET = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 0), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 0)), (("Posterize", 0.8, 5), ("Equalize", 1.0, 0)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 0), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 0)),
    (("Equalize", 0.0, 0), ("Equalize", 0.8, 0)), (("Invert", 0.6, 0), ("Equalize", 1.0, 0)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 0)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 0)), (("Color", 0.4, 0), ("Equalize", 0.6, 0)),
    (("Equalize", 0.4, 0), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 0)),
    (("Invert", 0.6, 0), ("Equalize", 1.0, 0)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 0), ("Equalize", 0.6, 0)),
)


def _signed(name: str, value: float, seed: Seed) -> tf.Tensor:
    value = tf.constant(value, tf.float32)
    return tf.where(uniform(seed) < 0.5, -value, value) if name in SIGNED else value


def _randaugment(image: tf.Tensor, seed: Seed, num_ops: int, magnitude: int) -> tf.Tensor:
    for seed_op in tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)):
        choice_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed_op, 2))
        branches = [lambda name=name: _op(name, image, _signed(name, magnitude_bins(name, 31)[magnitude], sign_seed))
                    for name in RANDAUGMENT_OPS]
        image = tf.switch_case(_randint_below(choice_seed, len(RANDAUGMENT_OPS)), branches)
    return image


def _autoaugment(image: tf.Tensor, seed: Seed) -> tf.Tensor:
    choice_seed, *op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))

    def sub_policy(ops):
        def apply():
            out = image
            for (name, probability, bin_index), apply_seed, sign_seed in zip(ops, op_seeds[0::2], op_seeds[1::2]):
                value = _signed(name, magnitude_bins(name, 10)[bin_index], sign_seed)
                out = tf.cond(uniform(apply_seed) < probability, lambda o=out, n=name, v=value: _op(n, o, v),
                              lambda o=out: o)
            return out
        return apply

    return tf.switch_case(_randint_below(choice_seed, len(AUTOAUGMENT_IMAGENET)),
                          [sub_policy(ops) for ops in AUTOAUGMENT_IMAGENET])


def apply_policy(image: tf.Tensor, policy: str, seed: Seed, num_ops: int = 2, magnitude: int = 9) -> tf.Tensor:
    if policy == "randaugment":
        return _randaugment(image, seed, num_ops, magnitude)
    if policy == "autoaugment":
        return _autoaugment(image, seed)
    raise ValueError(f"unknown augment.policy {policy!r}: use 'none', 'autoaugment' or 'randaugment'")
