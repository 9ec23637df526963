"""Ultralytics' (8.4.190) YOLO v8 train transforms in NumPy + OpenCV, deterministic from an explicit Generator.

The ops reproduce `ultralytics/data/augment.py` (`v8_transforms`: Mosaic(4) -> RandomPerspective -> RandomHSV ->
RandomFlip) and `data/base.py` (`load_image`, `set_rectangle`), so a model trained on them sees ultralytics'
input distribution; with the same random numbers they give ultralytics' output bit for bit (images; boxes too,
except for the float32 rounding of ultralytics' xywh round trip in its flip).

Conventions:
- an example is (image uint8 (H, W, 3) RGB, boxes float32 (K, 4) xyxy in pixels, classes int32 (K,));
- every random number comes from the `numpy.random.Generator` passed in, in the order each function documents
  (one scalar draw per ultralytics `random.*` call, in its order, so a stand-in `random` backed by a Generator
  with the same state replays ultralytics exactly).  Feed each example its own Generator (e.g.
  `np.random.default_rng((seed, epoch, index))`) and the pipeline is deterministic whatever the worker count;
- ultralytics works in BGR; all of this is channel-symmetric except the HSV jitter, which converts with
  RGB2HSV/HSV2RGB here so that it equals ultralytics' BGR2HSV/HSV2BGR on the BGR version of the image.

Differences from ultralytics, by design: the three extra mosaic images are drawn uniformly from the whole
dataset (ultralytics' `cache="ram"` behaviour; otherwise it picks from a buffer of recently loaded images), and
the mosaic decision is a flag (`mosaic`), not a draw (`hyp.mosaic` is 1.0 or 0.0 in practice: 0.0 for the last
`close_mosaic` epochs).  No MixUp/CutMix/CopyPaste (0 in the default hyperparameters) and no vertical flip.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np

from ..preprocessing import LetterboxInfo
from ..preprocessing import letterbox as _letterbox_image

__all__ = ["PAD_VALUE", "Example", "load_resized", "mosaic4", "random_perspective", "box_candidates",
           "random_hsv", "random_flip_lr", "letterbox", "train_example", "RectBatches", "rect_batch_shapes"]

PAD_VALUE = 114  # ultralytics' fill for mosaic canvas, warp border and letterbox padding

Example = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image, boxes, classes)


def _boxes(boxes: np.ndarray) -> np.ndarray:
    return np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)


def _classes(classes: np.ndarray) -> np.ndarray:
    return np.array(classes, dtype=np.int32, copy=True).reshape(-1)


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------------------------------- loading
def load_resized(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ultralytics' `load_image` (rect mode, what training and validation both use): scale so the long side is
    `size` (up or down), each side ceil(side * r) capped at `size`, cv2 INTER_LINEAR (8.4.190 uses it for
    shrinking too); boxes scale with the image (per axis, as ultralytics' normalized labels do).  No draws."""
    image = np.asarray(image)
    boxes = _boxes(boxes)
    h0, w0 = image.shape[:2]
    r = size / max(h0, w0)
    if r == 1:
        return image, boxes
    w, h = min(math.ceil(w0 * r), size), min(math.ceil(h0 * r), size)
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if resized.ndim == 2:
        resized = resized[..., None]
    gain = np.array([w / w0, h / h0, w / w0, h / h0], dtype=np.float32)
    return resized, boxes * gain


# ---------------------------------------------------------------------------------------------------- mosaic
def mosaic4(examples: Sequence[Example], size: int, rng: np.random.Generator) -> Example:
    """Ultralytics' 4-image `Mosaic`: a (2 size, 2 size) canvas of 114 split at a random centre, the examples
    (already `load_resized`) placed top-left, top-right, bottom-left, bottom-right around it, each cut at the
    canvas edge; boxes shifted with their image, clipped to [0, 2 size] and dropped when their area is 0.

    Draws: yc, then xc, each int(uniform(-b, 2 size + b)) with b = -size // 2 (ultralytics' `border`), i.e.
    uniform in [size / 2, 3 size / 2)."""
    if len(examples) != 4:
        raise ValueError(f"mosaic4 takes 4 examples, got {len(examples)}")
    border = -size // 2  # floor division of -size, as ultralytics
    yc = int(rng.uniform(-border, 2 * size + border))
    xc = int(rng.uniform(-border, 2 * size + border))
    s2 = 2 * size
    canvas = np.full((s2, s2, np.asarray(examples[0][0]).shape[2]), PAD_VALUE, np.uint8)
    all_boxes, all_classes = [], []
    for i, (image, boxes, classes) in enumerate(examples):
        image = np.asarray(image)
        h, w = image.shape[:2]
        if i == 0:  # ends at the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # right of the centre, above
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # left of the centre, below
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # right of the centre, below
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(s2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = image[y1b:y2b, x1b:x2b]
        padw, padh = x1a - x1b, y1a - y1b
        all_boxes.append(_boxes(boxes) + np.array([padw, padh, padw, padh], np.float32))
        all_classes.append(_classes(classes))
    boxes = np.concatenate(all_boxes, 0)
    classes = np.concatenate(all_classes, 0)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, s2)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, s2)
    keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0
    return canvas, boxes[keep], classes[keep]


# ------------------------------------------------------------------------------------------------ perspective
def _affine_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int], rng: np.random.Generator, degrees: float,
                   translate: float, scale: float | tuple[float, float], shear: float,
                   perspective: float) -> tuple[np.ndarray, float]:
    """M = T @ S @ R @ P @ C in float32, as ultralytics composes it: C moves the input's centre to the origin,
    P perspective, R rotation + scale, S shear, T puts the origin at a random point of the output's middle."""
    C = np.eye(3, dtype=np.float32)
    C[0, 2] = -in_hw[1] / 2
    C[1, 2] = -in_hw[0] / 2
    P = np.eye(3, dtype=np.float32)
    P[2, 0] = rng.uniform(-perspective, perspective)
    P[2, 1] = rng.uniform(-perspective, perspective)
    R = np.eye(3, dtype=np.float32)
    angle = rng.uniform(-degrees, degrees)
    low, high = (scale[0], scale[1]) if isinstance(scale, (tuple, list)) else (1 - scale, 1 + scale)
    s = float(rng.uniform(low, high))
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=float(angle), scale=s)
    S = np.eye(3, dtype=np.float32)
    S[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3, dtype=np.float32)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, s


def _transform_boxes(boxes: np.ndarray, M: np.ndarray, perspective: bool) -> np.ndarray:
    """The box around the 4 transformed corners of each box (float32, as ultralytics)."""
    n = len(boxes)
    if n == 0:
        return boxes
    corners = np.ones((n * 4, 3), dtype=np.float32)
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ M.T
    xy = (corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    return np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Ultralytics' filter of warped boxes (N, 4) xyxy: both sides > wh_thr px, area > area_thr of `before`'s
    (the input boxes times the warp's scale), aspect ratio < ar_thr.  Drops boxes mostly cut off or squashed."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator, *,
                       size: int | tuple[int, int], degrees: float = 0.0, translate: float = 0.1,
                       scale: float | tuple[float, float] = 0.5, shear: float = 0.0,
                       perspective: float = 0.0) -> Example:
    """Ultralytics' `RandomPerspective` with `size=(imgsz, imgsz)`, as `v8_transforms` builds it: the input's
    centre goes to a random point within `translate` of the output's centre, scaled by s in [1 - scale,
    1 + scale], rotated/sheared/perspective-warped if asked; the output is `size` ((h, w) or a square side)
    whatever the input (a 2 size mosaic canvas or a single `load_resized` image: 8.4.190 has no `border` and no
    LetterBox pre-transform any more).  cv2 warpAffine (warpPerspective if `perspective`), INTER_LINEAR, border
    114; boxes are the hull of their warped corners, clipped to the output and filtered by `box_candidates`
    against the input boxes times s.

    Draws (8, always, ultralytics' order): perspective x, perspective y, angle, scale, shear x, shear y,
    translate x, translate y; each `rng.uniform(low, high)`."""
    image = np.asarray(image)
    boxes, classes = _boxes(boxes), _classes(classes)
    out_h, out_w = _hw(size)
    M, s = _affine_matrix(image.shape[:2], (out_h, out_w), rng, degrees, translate, scale, shear, perspective)
    border = (PAD_VALUE,) * 4  # 4 values: cv2 tiles a 3-tuple oddly for > 3 channels
    if perspective:
        warped = cv2.warpPerspective(image, M, dsize=(out_w, out_h), borderValue=border)
    else:
        warped = cv2.warpAffine(image, M[:2], dsize=(out_w, out_h), borderValue=border)
    if warped.ndim == 2:
        warped = warped[..., None]
    new = _transform_boxes(boxes, M, bool(perspective))
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, out_w)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, out_h)
    keep = box_candidates(boxes * s, new)
    return warped, new[keep], classes[keep]


# ------------------------------------------------------------------------------------------------ colour, flip
def random_hsv(image: np.ndarray, rng: np.random.Generator, hgain: float = 0.015, sgain: float = 0.7,
               vgain: float = 0.4) -> np.ndarray:
    """Ultralytics' `RandomHSV` (the 8.3.79+ LUT): hue shifted by r_h * 180 (mod 180, OpenCV's 8-bit hue),
    saturation and value multiplied by 1 + r_s, 1 + r_v (clipped, truncated to uint8; saturation 0 stays 0),
    through one 3-channel cv2.LUT on the HSV image.  RGB in, RGB out (RGB2HSV = BGR2HSV on the BGR image).

    Draws: `rng.uniform(-1, 1, 3)` (r_h, r_s, r_v before the gains), only if a gain is non-zero and the image
    has 3 channels (as ultralytics)."""
    image = np.asarray(image)
    if image.shape[-1] != 3 or not (hgain or sgain or vgain):
        return image
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain]
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x + r[0] * 180) % 180).astype(np.uint8)
    lut_sat = np.clip(x * (r[1] + 1), 0, 255).astype(np.uint8)
    lut_val = np.clip(x * (r[2] + 1), 0, 255).astype(np.uint8)
    lut_sat[0] = 0
    lut = np.stack((lut_hue, lut_sat, lut_val), -1).reshape(1, 256, 3)
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2RGB)


def random_flip_lr(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                   p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Ultralytics' horizontal `RandomFlip`: mirror the image and boxes (x -> w - x) with probability p.

    Draws: one `rng.random()` (flip iff < p), always."""
    image, boxes = np.asarray(image), _boxes(boxes)
    if rng.random() < p:
        w = image.shape[1]
        image = np.ascontiguousarray(image[:, ::-1])
        boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1).astype(np.float32)
    return image, boxes


# ------------------------------------------------------------------------------------------------- letterbox
def letterbox(image: np.ndarray, boxes: np.ndarray, new_shape: int | tuple[int, int], *, scaleup: bool = True,
              center: bool = True, auto: bool = False, stride: int = 32,
              color: int = PAD_VALUE) -> tuple[np.ndarray, np.ndarray, LetterboxInfo]:
    """Ultralytics' `LetterBox` on an example, for eval / rect batches (`LetterBox(new_shape=rect_shape,
    scaleup=False)` after `load_resized`): the image through `preprocessing.letterbox` (the inference
    transform: its resize is within 1 grey level of cv2's), boxes scaled by r and shifted by the (left, top)
    padding as ultralytics does (float32).  Returns (image, boxes, info).  No draws."""
    out, info = _letterbox_image(np.asarray(image), _hw(new_shape), auto=auto, scaleup=scaleup, stride=stride,
                                 center=center, pad_value=color)
    boxes = _boxes(boxes) * info.ratio[0]
    boxes = boxes + np.array([info.pad[0], info.pad[1], info.pad[0], info.pad[1]], np.float32)
    return out, boxes, info


# -------------------------------------------------------------------------------------------------- pipeline
def train_example(read: Callable[[int], Example], index: int, rng: np.random.Generator, *, size: int,
                  mosaic: bool, num_examples: int, degrees: float = 0.0, translate: float = 0.1,
                  scale: float = 0.5, shear: float = 0.0, perspective: float = 0.0, hsv_h: float = 0.015,
                  hsv_s: float = 0.7, hsv_v: float = 0.4, fliplr: float = 0.5) -> Example:
    """One training example of ultralytics' `v8_transforms` (default hyperparameters): with `mosaic`, a mosaic
    of `index` and 3 random examples; else `index` alone, long side resized to `size`; then random perspective
    to (size, size), HSV jitter and horizontal flip.  `read(i)` returns example i as stored (any size).

    Draws, in order: (mosaic only) 3 indices `rng.integers(num_examples)` one by one, and the mosaic centre
    (`mosaic4`); the perspective's 8 (`random_perspective`); HSV's 3 (`random_hsv`); the flip's 1.
    Returns image (size, size, 3) uint8, boxes float32 (K, 4) xyxy in [0, size], classes int32 (K,)."""
    if mosaic:
        indices = [index] + [int(rng.integers(num_examples)) for _ in range(3)]
        parts = []
        for i in indices:
            image, boxes, classes = read(i)
            image, boxes = load_resized(image, boxes, size)
            parts.append((image, boxes, _classes(classes)))
        image, boxes, classes = mosaic4(parts, size, rng)
    else:
        image, boxes, classes = read(index)
        image, boxes = load_resized(image, boxes, size)
    image, boxes, classes = random_perspective(image, boxes, classes, rng, size=size, degrees=degrees,
                                               translate=translate, scale=scale, shear=shear,
                                               perspective=perspective)
    image = random_hsv(image, rng, hsv_h, hsv_s, hsv_v)
    image, boxes = random_flip_lr(image, boxes, rng, fliplr)
    return np.ascontiguousarray(image, dtype=np.uint8), boxes, _classes(classes)


# ------------------------------------------------------------------------------------------------ rect batches
class RectBatches(NamedTuple):
    """Ultralytics' rectangular eval batches.  `order[k]`: the image at dataset position k (images sorted by
    aspect ratio h / w); `shapes[k]`: the (h, w) that position is letterboxed to (its batch's shape);
    `batch_index[k]` = k // batch_size; `batch_shapes[b]`: (h, w) of batch b, multiples of the stride."""
    order: np.ndarray
    shapes: np.ndarray
    batch_index: np.ndarray
    batch_shapes: np.ndarray


def rect_batch_shapes(hw: np.ndarray, batch_size: int, img_size: int, stride: int = 32,
                      pad: float = 0.5) -> RectBatches:
    """Ultralytics' `set_rectangle`: sort images by h / w (`argsort`, its default kind, as ultralytics), cut
    into batches of `batch_size`; a batch of only wide images (max ratio < 1) gets (max ratio, 1), one of only
    tall images (min ratio > 1) gets (1, 1 / min ratio), a mixed one (1, 1); shape = ceil(that * img_size /
    stride + pad) * stride.  `hw`: (N, 2) original (height, width) of each image."""
    hw = np.asarray(hw, dtype=np.float64).reshape(-1, 2)
    n = len(hw)
    batch_index = np.floor(np.arange(n) / batch_size).astype(int)
    nb = batch_index[-1] + 1
    ar = hw[:, 0] / hw[:, 1]
    order = ar.argsort()
    ar = ar[order]
    shapes = [[1, 1]] * nb
    for b in range(nb):
        ari = ar[batch_index == b]
        lo, hi = ari.min(), ari.max()
        if hi < 1:
            shapes[b] = [hi, 1]
        elif lo > 1:
            shapes[b] = [1, 1 / lo]
    batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride
    return RectBatches(order, batch_shapes[batch_index], batch_index, batch_shapes)
