"""`shapes`: an embedded synthetic detection / segmentation dataset, the offline default for the dense tasks.

Coloured shapes (circle, square, triangle, star, cross) on textured backgrounds (smooth colour noise, linear
gradients, stripes, plain), drawn with numpy alone from (seed, split, index): no files, no downloads, and the
same bytes on every call.  Each example has

- `image`: uint8 RGB (H, W, 3), H = W = `image_size` (default 128);
- `boxes`: float32 (K, 4) xyxy in pixels, torchvision's convention (a box covering pixel columns a..b inclusive
  is [a, ., b + 1, .]); each box is the extent of the *whole* object as drawn, also where a later object hides
  part of it;
- `labels`: int32 (K,), class ids 1..5 (0 is the background, as in torchvision's detection models);
- `mask`: uint8 (H, W) semantic mask, the class id of the top-most object at each pixel, 0 elsewhere.  Shapes
  are drawn with hard edges (a pixel belongs to a shape when its centre does), so the mask is exactly the set
  of pixels painted by each class and has no ignore (255) pixels; 255 only appears later, from padding;
- `instances`: uint8 (H, W) instance map, i + 1 where object i (row i of `boxes`) is the top-most, else 0.

An image holds 1 to 4 objects (K <= `MAX_BOXES`) of diameters from 10% to 60% of the image side, fully inside
the image, in random rotations and colours (colour says nothing about the class: a colour far from the
background under the object is drawn).  Objects may overlap, but never so much that an earlier object keeps
less than `MIN_VISIBLE` (60%) of its pixels; so each object's visible pixels lie inside its box and cover a
large part of its area.  The class of an object is drawn uniformly, so the classes are balanced.

Splits: 'train' and 'validation' draw from disjoint seed streams (numpy SeedSequence([seed, split, index])),
default sizes 2000 and 300.  Generating the 2000 training images at 128x128 takes about 3 s of one CPU core.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np

SHAPES_CLASSES = ("__background__", "circle", "square", "triangle", "star", "cross")  # label id -> name
NUM_CLASSES = len(SHAPES_CLASSES)  # including the background, as torchvision's num_classes
MAX_BOXES = 4
MIN_VISIBLE = 0.6
IMAGE_SIZE = 128
NUM_EXAMPLES = {"train": 2000, "validation": 300}
SPLITS = {"train": 0, "validation": 1}
_DIAMETER = (0.10, 0.60)  # object diameter as a fraction of the image side, log-uniform
_MIN_AREA = 12  # pixels: smaller rasterisations are redrawn
_BACKGROUNDS = ("noise", "gradient", "stripes", "plain")


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}: use 'train' or 'validation'")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def _interp_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells) bilinear interpolation weights, half-pixel centres, edges clamped."""
    pos = np.clip((np.arange(size) + 0.5) * cells / size - 0.5, 0, cells - 1)
    low = np.minimum(np.floor(pos).astype(int), cells - 2) if cells > 1 else np.zeros(size, int)
    frac = pos - low
    weights = np.zeros((size, cells), np.float32)
    weights[np.arange(size), low] = 1 - frac
    if cells > 1:
        weights[np.arange(size), low + 1] += frac
    return weights


@functools.lru_cache(maxsize=8)
def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


def _background(rng: np.random.Generator, size: int, ys: np.ndarray, xs: np.ndarray,
                grain: np.ndarray) -> np.ndarray:
    kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    colors = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    if kind == "noise":  # smooth colour noise: a coarse random grid, upsampled
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        weights = _interp_matrix(cells, size)
        image = np.matmul(weights, np.matmul(weights, grid.transpose(2, 1, 0)).transpose(0, 2, 1)).transpose(1, 2, 0)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        along = (xs * math.cos(angle) + ys * math.sin(angle)) / size  # in about [-1.4, 1.4]
        if kind == "gradient":
            t = np.clip(along * 0.7 + 0.5, 0, 1)
        elif kind == "stripes":
            period = rng.uniform(0.05, 0.2)
            sharpness = rng.uniform(0.5, 3.0)
            t = np.clip(0.5 + sharpness * np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi)), 0, 1)
        else:  # plain
            t = np.zeros_like(along)
        image = colors[0] + t[..., None] * (colors[1] - colors[0])
    return image + grain * rng.uniform(0, 40)


def _shape_mask(label: int, dx: np.ndarray, dy: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Pixel centres (offsets dx, dy from the centre) inside the shape of circumradius `radius`."""
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    name = SHAPES_CLASSES[label]
    if name == "circle":
        return dx * dx + dy * dy <= radius * radius
    if name == "square":
        half = radius / math.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if name == "triangle":  # equilateral: three half-planes at the inradius R/2
        inside = np.ones(u.shape, bool)
        for k in range(3):
            normal = math.pi / 3 + 2 * math.pi * k / 3
            inside &= u * math.cos(normal) + v * math.sin(normal) <= radius / 2
        return inside
    if name == "star":  # five points, inner radius 0.45 R: fold the angle into one half-spike
        sector = 2 * math.pi / 5
        psi = np.mod(np.arctan2(v, u), sector)
        delta = np.minimum(psi, sector - psi)
        rho = np.hypot(u, v)
        px, py = rho * np.cos(delta), rho * np.sin(delta)
        inner = 0.45 * radius
        bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
        return (bx - radius) * py - by * (px - radius) >= 0  # on the centre's side of the edge (R,0)-(bx,by)
    if name == "cross":  # a plus sign, arms 0.94 R long and 0.32 R half-wide
        long, wide = 0.94 * radius, 0.32 * radius
        au, av = np.abs(u), np.abs(v)
        return ((au <= long) & (av <= wide)) | ((au <= wide) & (av <= long))
    raise ValueError(label)


def generate(split: str, index: int, image_size: int = IMAGE_SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    """Example `index` of `split`: image, boxes (K, 4), labels (K,), mask and instances (see the module doc)."""
    rng = _rng(split, index, seed)
    size = int(image_size)
    if size < 32:
        raise ValueError(f"image_size must be >= 32, got {size}")
    ys, xs = _grids(size)
    # uniform pixel noise in [-0.5, 0.5), one field per image (cheaper than normal noise), scaled per use
    grain = np.frombuffer(rng.bytes(size * size * 3), np.uint8).reshape(size, size, 3) * np.float32(1 / 255) - 0.5
    image = _background(rng, size, ys - size / 2, xs - size / 2, grain)
    owner = np.zeros((size, size), np.int32)  # 1 + index of the top-most object
    full_areas, visible, boxes, labels = [], [], [], []
    for _ in range(int(rng.integers(1, MAX_BOXES + 1))):
        for _attempt in range(12):
            label = int(rng.integers(1, NUM_CLASSES))
            radius = size * math.exp(rng.uniform(math.log(_DIAMETER[0]), math.log(_DIAMETER[1]))) / 2
            cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
            angle = rng.uniform(0, 2 * math.pi)
            x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, size)
            y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, size)
            window = _shape_mask(label, xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy, radius, angle)
            area = int(window.sum())
            if area < _MIN_AREA:
                continue
            covered = np.bincount(owner[y0:y1, x0:x1][window], minlength=len(boxes) + 1)[1:]
            if all(visible[i] - covered[i] >= MIN_VISIBLE * full_areas[i] for i in range(len(boxes))):
                break
        else:
            continue  # no placement leaves the others visible enough: fewer objects
        rows, cols = np.nonzero(window)
        boxes.append([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        labels.append(label)
        visible = [count - hidden for count, hidden in zip(visible, covered)] + [area]
        full_areas.append(area)
        # a colour far from the background under the object, a gentle shading ramp, a little noise
        under = image[y0:y1, x0:x1][window].mean(axis=0)
        for _try in range(10):
            color = rng.uniform(0, 255, 3).astype(np.float32)
            if np.abs(color - under).mean() >= 60:
                break
        else:
            color = np.where(under < 128, 255.0, 0.0).astype(np.float32)
        shade_angle, shade = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.3)
        ramp = ((xs[y0:y1, x0:x1] - cx) * math.cos(shade_angle) + (ys[y0:y1, x0:x1] - cy) * math.sin(shade_angle))
        fill = color * (1 + shade * ramp[..., None] / (2 * radius))
        fill = fill + grain[y0:y1, x0:x1] * rng.uniform(0, 20)
        image[y0:y1, x0:x1][window] = fill[window]
        owner[y0:y1, x0:x1][window] = len(boxes)
    class_of = np.array([0] + labels, np.uint8)
    return {"image": np.clip(np.round(image), 0, 255).astype(np.uint8),
            "boxes": np.array(boxes, np.float32).reshape(-1, 4),
            "labels": np.array(labels, np.int32),
            "mask": class_of[owner],
            "instances": owner.astype(np.uint8)}


def load(split: str = "train", num_examples: Optional[int] = None, image_size: int = IMAGE_SIZE,
         seed: int = 0) -> dict[str, np.ndarray]:
    """Examples 0..num_examples-1 of `split` (default `NUM_EXAMPLES[split]`), stacked; boxes padded to
    `MAX_BOXES` rows: `boxes` (N, MAX_BOXES, 4) float32 (padding rows 0), `labels` (N, MAX_BOXES) int32
    (padding 0 = background), `box_mask` (N, MAX_BOXES) bool; `image` (N, S, S, 3), `mask` and `instances`
    (N, S, S) uint8."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}: use 'train' or 'validation'")
    count = NUM_EXAMPLES[split] if num_examples is None else int(num_examples)
    size = int(image_size)
    out = {"image": np.zeros((count, size, size, 3), np.uint8),
           "mask": np.zeros((count, size, size), np.uint8),
           "instances": np.zeros((count, size, size), np.uint8),
           "boxes": np.zeros((count, MAX_BOXES, 4), np.float32),
           "labels": np.zeros((count, MAX_BOXES), np.int32),
           "box_mask": np.zeros((count, MAX_BOXES), bool)}
    for index in range(count):
        example = generate(split, index, size, seed)
        k = len(example["labels"])
        for key in ("image", "mask", "instances"):
            out[key][index] = example[key]
        out["boxes"][index, :k] = example["boxes"]
        out["labels"][index, :k] = example["labels"]
        out["box_mask"][index, :k] = True
    return out
