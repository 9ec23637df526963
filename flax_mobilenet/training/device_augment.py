"""The per-example augmentations that are pure tensor math, in JAX inside the jitted train step, and the
normalisation of every task's uint8 batch (train and eval), so the host only decodes, crops and resizes.

`DeviceTransform(batch) -> batch`: for classification training, per example (vmapped over the batch) a horizontal
flip, AutoAugment's ImageNet policy or RandAugment, then the normalisation (mean/std of the model's serving
`WeightsInfo`) and random erasing; for everything else the normalisation alone.  Only the enabled ops are traced:
with policy 'none' there is no policy graph at all.

Randomness: each training row carries `seed`, a (2,) uint32 drawn by the host from the example's own stateless seed
(from (seed, epoch, position)); it is the raw threefry key of that example's augmentation, so batch k is the same
on any device count and whether the run started at step 0 or at step k.

Semantics are torchvision's `transforms.v2` on uint8 tensors (nearest interpolation, fill 0): the ops and their
magnitude tables (`AutoAugment._AUGMENTATION_SPACE`), AutoAugment's sub-policy choice (uniform), apply
probabilities (rand <= p) and signs (rand <= 0.5), RandAugment's uniform op choice, RandomHorizontalFlip(0.5) and
RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0) after Normalize.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, jax.Array]
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = frozenset(GEOMETRIC + ("Brightness", "Color", "Contrast", "Sharpness"))
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
POLICIES = ("none", "autoaugment", "randaugment")


def magnitude_bins(name: str, num_bins: int, height: int, width: int) -> np.ndarray:
    """torchvision's magnitude table of an op (translations in pixels of the image; Solarize's threshold as a
    fraction of 255; magnitude-free ops 0), float32 as torchvision's."""
    linear = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0 * width,
              "TranslateY": 150.0 / 331.0 * height, "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9,
              "Contrast": 0.9, "Sharpness": 0.9}
    if name in linear:
        return np.linspace(0.0, linear[name], num_bins).astype(np.float32)
    if name == "Posterize":
        return (8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 4))).astype(np.float32)
    if name == "Solarize":
        return np.linspace(1.0, 0.0, num_bins).astype(np.float32)
    return np.zeros(num_bins, np.float32)


def normalize(image: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 -> float32 (x / 255 - mean) / std."""
    return (image.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


# ------------------------------------------------------------------ image ops: torchvision v2 on uint8 tensors
def _to_uint8(x: jax.Array) -> jax.Array:
    """Clamp and truncate, as torch's float -> uint8 `.to()`."""
    return jnp.clip(x, 0.0, 255.0).astype(jnp.uint8)


def _gray(image: jax.Array) -> jax.Array:
    """torchvision's rgb_to_grayscale in float, floored as it is for uint8 images: (H, W)."""
    x = image.astype(jnp.float32)
    return jnp.floor(x[..., 0] * 0.2989 + x[..., 1] * 0.587 + x[..., 2] * 0.114)


def _blend(image: jax.Array, other: jax.Array, ratio: jax.Array) -> jax.Array:
    return _to_uint8(image.astype(jnp.float32) * ratio + other * (1.0 - ratio))


def brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    return _to_uint8(image.astype(jnp.float32) * factor)


def saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    return _blend(image, _gray(image)[..., None], factor)


def contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    return _blend(image, jnp.mean(_gray(image)), factor)


def sharpness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """The interior blended with its 3x3 smoothing (1s around a 5, / 13, rounded); the border unchanged."""
    x = image.astype(jnp.float32)
    height, width = image.shape[:2]
    window = sum(x[i:height - 2 + i, j:width - 2 + j] for i in range(3) for j in range(3))
    blurred = jnp.round((window + 4.0 * x[1:-1, 1:-1]) / 13.0)
    interior = x[1:-1, 1:-1] + (1.0 - factor) * (blurred - x[1:-1, 1:-1])
    return _to_uint8(x.at[1:-1, 1:-1].set(interior))


def posterize(image: jax.Array, bits: jax.Array) -> jax.Array:
    mask = (255 << (8 - bits.astype(jnp.int32))) & 255
    return image & mask.astype(jnp.uint8)


def solarize(image: jax.Array, threshold: jax.Array) -> jax.Array:
    return jnp.where(image.astype(jnp.float32) >= threshold, 255 - image, image)


def autocontrast(image: jax.Array) -> jax.Array:
    x = image.astype(jnp.float32)
    low, high = jnp.min(x, axis=(0, 1)), jnp.max(x, axis=(0, 1))
    flat = high == low
    inv_scale = jnp.where(flat, 1.0, (high - low) * (1.0 / 255.0))
    return _to_uint8((x - jnp.where(flat, 0.0, low)) / inv_scale)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    """PIL's ImageOps.equalize lookup table (torchvision's equalize_image) for one (H, W) uint8 channel."""
    histogram = jnp.bincount(channel.reshape(-1).astype(jnp.int32), length=256)
    cumulative = jnp.cumsum(histogram)
    step = (channel.size - histogram[jnp.argmax(cumulative)]) // 255
    lut = jnp.clip((cumulative[:-1] + step // 2) // jnp.maximum(step, 1), 0, 255)
    lut = jnp.concatenate([jnp.zeros(1, lut.dtype), lut]).astype(jnp.uint8)
    return jnp.where(step == 0, channel, lut[channel.astype(jnp.int32)])


def equalize(image: jax.Array) -> jax.Array:
    return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def invert(image: jax.Array) -> jax.Array:
    return 255 - image


def affine_matrix(name: str, magnitude: jax.Array, height: int, width: int) -> jax.Array:
    """The inverse affine matrix (6,) that torchvision's `_get_inverse_affine_matrix` gives the op at a signed
    magnitude (shear = tan of the angle, translation in pixels truncated to int, rotation in degrees), in its
    convention: coordinates relative to the image centre."""
    m = jnp.asarray(magnitude, jnp.float32)
    one, zero = jnp.ones_like(m), jnp.zeros_like(m)
    if name == "ShearX":  # center [0, 0]: shear about the top-left corner
        return jnp.stack([one, m, m * height / 2, zero, one, zero])
    if name == "ShearY":
        return jnp.stack([one, zero, zero, m, one, m * width / 2])
    if name == "TranslateX":
        return jnp.stack([one, zero, -jnp.trunc(m), zero, one, zero])
    if name == "TranslateY":
        return jnp.stack([one, zero, zero, zero, one, -jnp.trunc(m)])
    if name == "Rotate":  # counter-clockwise by `magnitude` degrees
        angle = m * (math.pi / 180.0)
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        return jnp.stack([cos, -sin, zero, sin, cos, zero])
    raise ValueError(f"{name} is not a geometric op ({', '.join(GEOMETRIC)})")


def warp(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """torchvision's affine on a tensor: each output pixel samples the input at `matrix` applied to its centred
    coordinates (grid_sample, align_corners=False), nearest (round half to even), 0 outside."""
    height, width = image.shape[:2]
    x = jnp.arange(width, dtype=jnp.float32) - (width - 1) * 0.5
    y = jnp.arange(height, dtype=jnp.float32)[:, None] - (height - 1) * 0.5
    m = matrix.astype(jnp.float32)
    grid_x = x * (m[0] / (0.5 * width)) + y * (m[1] / (0.5 * width)) + m[2] / (0.5 * width)
    grid_y = x * (m[3] / (0.5 * height)) + y * (m[4] / (0.5 * height)) + m[5] / (0.5 * height)
    column = jnp.round(((grid_x + 1.0) * width - 1.0) / 2.0).astype(jnp.int32)
    row = jnp.round(((grid_y + 1.0) * height - 1.0) / 2.0).astype(jnp.int32)
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    sampled = image[jnp.clip(row, 0, height - 1), jnp.clip(column, 0, width - 1)]
    return jnp.where(inside[..., None], sampled, jnp.zeros_like(sampled))


COLOR_OPS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "Identity": lambda image, m: image,
    "Brightness": lambda image, m: brightness(image, 1.0 + m),
    "Color": lambda image, m: saturation(image, 1.0 + m),
    "Contrast": lambda image, m: contrast(image, 1.0 + m),
    "Sharpness": lambda image, m: sharpness(image, 1.0 + m),
    "Posterize": posterize,
    "Solarize": lambda image, m: solarize(image, 255.0 * m),
    "AutoContrast": lambda image, m: autocontrast(image),
    "Equalize": lambda image, m: equalize(image),
    "Invert": lambda image, m: invert(image),
}


def apply_op(name: str, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    """One named op at a signed magnitude (torchvision's `_apply_image_or_video_transform`)."""
    if name in GEOMETRIC:
        return warp(image, affine_matrix(name, magnitude, *image.shape[:2]))
    return COLOR_OPS[name](image, magnitude)


def _apply_one_of(names: Sequence[str], index: jax.Array, image: jax.Array, magnitude: jax.Array) -> jax.Array:
    """The op names[index]: the geometric ones share one warp (their matrix selected), the others one branch each
    (under vmap, every branch is computed and the example's selected)."""
    geometric = [n for n in names if n in GEOMETRIC]
    others = [n for n in names if n not in GEOMETRIC]
    branches = [lambda im, i, m, name=name: COLOR_OPS[name](im, m) for name in others]
    if geometric:
        def warp_branch(im, i, m):
            matrices = jnp.stack([affine_matrix(n, m, *im.shape[:2]) for n in geometric])
            return warp(im, matrices[jnp.clip(i, 0, len(geometric) - 1)])
        branches.append(warp_branch)
    branch_of = np.array([others.index(n) if n in others else len(others) for n in names], np.int32)
    geometric_of = np.array([geometric.index(n) if n in geometric else 0 for n in names], np.int32)
    return jax.lax.switch(jnp.asarray(branch_of)[index], branches, image, jnp.asarray(geometric_of)[index],
                          magnitude)


def _signed(names: Sequence[str], index: jax.Array, magnitude: jax.Array, key: jax.Array) -> jax.Array:
    signed = jnp.asarray([n in SIGNED for n in names])[index]
    return jnp.where(signed & (jax.random.uniform(key) <= 0.5), -magnitude, magnitude)


AUTOAUGMENT_OPS = tuple(sorted({name for sub in AUTOAUGMENT_IMAGENET for name, _, _ in sub}))


def autoaugment_choices(key: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """AutoAugment's ImageNet policy's draws: a uniformly chosen sub-policy; per op of it, (index into
    `AUTOAUGMENT_OPS`, signed magnitude: signed ops negated when rand <= 0.5, applied: rand <= its probability)."""
    names = AUTOAUGMENT_OPS
    op = np.array([[names.index(n) for n, _, _ in sub] for sub in AUTOAUGMENT_IMAGENET], np.int32)
    probability = np.array([[p for _, p, _ in sub] for sub in AUTOAUGMENT_IMAGENET], np.float32)
    magnitude = np.array([[magnitude_bins(n, 10, height, width)[b] for n, _, b in sub]
                          for sub in AUTOAUGMENT_IMAGENET], np.float32)
    choice_key, apply_key, sign_key = jax.random.split(key, 3)
    policy = jax.random.randint(choice_key, (), 0, len(AUTOAUGMENT_IMAGENET))
    index = jnp.asarray(op)[policy]
    values = jax.vmap(functools.partial(_signed, names))(index, jnp.asarray(magnitude)[policy],
                                                         jax.random.split(sign_key, 2))
    return index, values, jax.random.uniform(apply_key, (2,)) <= jnp.asarray(probability)[policy]


def autoaugment(key: jax.Array, image: jax.Array) -> jax.Array:
    index, values, applies = autoaugment_choices(key, *image.shape[:2])
    for slot in range(2):
        image = jnp.where(applies[slot], _apply_one_of(AUTOAUGMENT_OPS, index[slot], image, values[slot]), image)
    return image


def randaugment_choices(key: jax.Array, num_ops: int, magnitude: int, height: int, width: int,
                        num_bins: int = 31) -> tuple[jax.Array, jax.Array]:
    """RandAugment's draws: `num_ops` times (a uniformly chosen index into `RANDAUGMENT_OPS`, its magnitude at bin
    `magnitude` of 31, signed ops negated when rand <= 0.5)."""
    table = jnp.asarray([magnitude_bins(n, num_bins, height, width)[magnitude] for n in RANDAUGMENT_OPS])
    choice_key, sign_key = jax.random.split(key)
    index = jax.random.randint(choice_key, (num_ops,), 0, len(RANDAUGMENT_OPS))
    values = jax.vmap(functools.partial(_signed, RANDAUGMENT_OPS))(index, table[index],
                                                                   jax.random.split(sign_key, num_ops))
    return index, values


def randaugment(key: jax.Array, image: jax.Array, num_ops: int, magnitude: int) -> jax.Array:
    index, values = randaugment_choices(key, num_ops, magnitude, *image.shape[:2])
    for op in range(num_ops):
        image = _apply_one_of(RANDAUGMENT_OPS, index[op], image, values[op])
    return image


def random_erasing(key: jax.Array, image: jax.Array, probability: float, attempts: int = 10) -> jax.Array:
    """torchvision RandomErasing(p, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0) of a normalised image: the
    first of 10 drawn rectangles that fits, uniformly placed; none fits -> unchanged."""
    height, width = image.shape[:2]
    area_key, ratio_key, top_key, left_key, apply_key = jax.random.split(key, 5)
    area = height * width * jax.random.uniform(area_key, (attempts,), minval=0.02, maxval=0.33)
    ratio = jnp.exp(jax.random.uniform(ratio_key, (attempts,), minval=math.log(0.3), maxval=math.log(3.3)))
    h = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
    fits = (h < height) & (w < width)
    first = jnp.argmax(fits)
    h, w = h[first], w[first]
    top = jax.random.randint(top_key, (), 0, height - h + 1)
    left = jax.random.randint(left_key, (), 0, width - w + 1)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    erase = (jax.random.uniform(apply_key) < probability) & jnp.any(fits)
    return jnp.where(erase & inside[..., None], 0.0, image)


@dataclasses.dataclass(frozen=True)
class DeviceTransform:
    """batch -> batch with `image` normalised (float32), after the enabled per-example augmentations."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = False
    policy: str = "none"
    randaugment_num_ops: int = 2
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown augment.policy {self.policy!r}: use 'none', 'autoaugment' or 'randaugment'")

    @property
    def augments(self) -> bool:
        return self.flip or self.policy != "none" or bool(self.random_erasing)

    def __call__(self, batch: Batch) -> Batch:
        image = batch["image"]
        if not self.augments:
            return {**batch, "image": normalize(image, self.mean, self.std)}
        keys = jax.random.wrap_key_data(batch["seed"], impl="threefry2x32")
        return {**batch, "image": jax.vmap(self._augment)(keys, image)}

    def _augment(self, key: jax.Array, image: jax.Array) -> jax.Array:
        flip_key, policy_key, erase_key = jax.random.split(key, 3)
        if self.flip:
            image = jnp.where(jax.random.uniform(flip_key) < 0.5, image[:, ::-1], image)
        if self.policy == "autoaugment":
            image = autoaugment(policy_key, image)
        elif self.policy == "randaugment":
            image = randaugment(policy_key, image, self.randaugment_num_ops, self.randaugment_magnitude)
        image = normalize(image, self.mean, self.std)
        if self.random_erasing:
            image = random_erasing(erase_key, image, self.random_erasing)
        return image
