"""Box- and mask-aware augmentations for detection and segmentation, in TF graph ops with stateless randomness.

Like `augment.py`, every random choice is drawn from a [2] int64 `seed` (the input pipeline derives it from
(seed, epoch, position)), so a resumed run sees exactly the batches it would have seen.  The semantics are
torchvision's (`transforms.v2` and its detection / segmentation `references`), with static output shapes:

- an image is uint8 RGB (H, W, 3), H and W possibly dynamic until the final resize or crop;
- boxes are float32 (N, 4) xyxy in pixels (a box covering pixel columns a..b is [a, ., b + 1, .]) with a
  *fixed* number of rows N: a row whose label is 0 (torchvision's background id) is padding.  Transforms never
  move rows: a box that is dropped (its centre outside an IoU crop, or left narrower than 1 px) becomes a row
  of zeros with label 0, so `box_mask = labels > 0`;
- a mask is uint8 (H, W): class ids (or instance ids), 255 = ignore.  Masks go through exactly the geometry of
  the pixels (nearest-neighbour where the image is resampled), padding fills them with `mask_fill`.

Transforms: `random_iou_crop` (SSD's RandomIoUCrop), `random_zoom_out` (RandomZoomOut), `horizontal_flip` /
`random_horizontal_flip`, `photometric_distort` (RandomPhotometricDistort, with torchvision's uint8 kernels),
`segmentation_geometry` + `resize_flip_crop` (the segmentation reference's RandomResize, RandomHorizontalFlip and
RandomCrop with pad-if-smaller, computed for the crop's pixels only),
`resize` (to the model's fixed input size) and `sanitize_boxes` (SanitizeBoundingBoxes).  Recipes:
`ssdlite_train`, `ssd_train`, `detection_eval`, `segmentation_train`, `segmentation_eval`; `pad_boxes` pads
a variable number of boxes to a fixed count.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from . import resample
from .augment import Seed, pillow_resize, uniform

Size = Union[int, Sequence[int]]

SSD_MEAN = (123.0, 117.0, 104.0)  # torchvision's detection references: the zoom-out fill
IOU_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # minimum IoU choices; 1.0 = leave the image as it is
IGNORE = 255


# ---------------------------------------------------------------------------------------------- helpers
def _seeds(seed: Seed, n: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _randint_between(seed: Seed, low, high) -> tf.Tensor:
    """Uniform integer in [low, high) (int32 scalars, possibly tensors)."""
    return tf.random.stateless_uniform((), seed, minval=low, maxval=high, dtype=tf.int32)


def _pair(size: Size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _prepare(boxes, labels) -> tuple[tf.Tensor, tf.Tensor]:
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    valid = labels > 0
    return tf.where(valid[:, None], boxes, 0.0), tf.where(valid, labels, 0)


def _drop(boxes: tf.Tensor, labels: tf.Tensor, keep: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    keep = keep & (labels > 0)
    return tf.where(keep[:, None], boxes, 0.0), tf.where(keep, labels, 0)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _hw(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return shape[0], shape[1]


def pad_boxes(boxes, labels, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A variable number of boxes (K, 4) / labels (K,) as exactly `max_boxes` rows (zeros and label 0 after
    the K real ones; boxes beyond `max_boxes` are dropped)."""
    boxes = tf.cast(tf.reshape(boxes, (-1, 4)), tf.float32)[:max_boxes]
    labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)[:max_boxes]
    missing = max_boxes - tf.shape(labels)[0]
    boxes = tf.ensure_shape(tf.pad(boxes, [[0, missing], [0, 0]]), (max_boxes, 4))
    labels = tf.ensure_shape(tf.pad(labels, [[0, missing]]), (max_boxes,))
    return boxes, labels


def sanitize_boxes(boxes, labels, height, width, min_size: float = 1.0, min_area: float = 1.0
                   ) -> tuple[tf.Tensor, tf.Tensor]:
    """torchvision's SanitizeBoundingBoxes: drop (zero, label 0) boxes narrower or shorter than `min_size`,
    smaller than `min_area`, or outside the (height, width) canvas."""
    boxes, labels = _prepare(boxes, labels)
    x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
    w, h = x2 - x1, y2 - y1
    width, height = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
    keep = (w >= min_size) & (h >= min_size) & (w * h >= min_area) & tf.reduce_all(boxes >= 0, axis=-1)
    keep &= (x1 <= width) & (x2 <= width) & (y1 <= height) & (y2 <= height)
    return _drop(boxes, labels, keep)


# ------------------------------------------------------------------------------------------ geometry
def crop(image, top, left, height, width, boxes=None, labels=None, mask=None):
    """Crop [top, top + height) x [left, left + width); boxes shifted and clipped to the crop (not dropped)."""
    image = image[top:top + height, left:left + width]
    if mask is not None:
        mask = mask[top:top + height, left:left + width]
    if boxes is not None:
        boxes, labels = _prepare(boxes, labels)
        offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
        limit = tf.cast(tf.stack([width, height, width, height]), tf.float32)
        boxes = tf.clip_by_value(boxes - offset, 0.0, limit)
        boxes, labels = _drop(boxes, labels, tf.ones_like(labels, tf.bool))
    return image, boxes, labels, mask


def _box_iou(boxes: tf.Tensor, crops: tf.Tensor) -> tf.Tensor:
    """IoU of boxes (N, 4) with crops (..., 4): (..., N), as torchvision.ops.box_iou."""
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_crops = (crops[..., 2] - crops[..., 0]) * (crops[..., 3] - crops[..., 1])
    top_left = tf.maximum(boxes[:, :2], crops[..., None, :2])
    bottom_right = tf.minimum(boxes[:, 2:], crops[..., None, 2:])
    wh = tf.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return tf.math.divide_no_nan(inter, area_crops[..., None] + area_boxes - inter)


def crop_within(boxes, labels, top, left, crop_h, crop_w) -> tf.Tensor:
    """(..., N): the boxes (label > 0) whose centres lie strictly inside the crop(s) (int32 (...) parameters)."""
    cx, cy = 0.5 * (boxes[:, 0] + boxes[:, 2]), 0.5 * (boxes[:, 1] + boxes[:, 3])
    top, left, bottom, right = (tf.cast(x, tf.float32)[..., None] for x in (top, left, top + crop_h, left + crop_w))
    return (left < cx) & (cx < right) & (top < cy) & (cy < bottom) & (labels > 0)


def iou_crop_candidates(boxes, labels, height, width, min_iou, scale_draws, position_draws, *,
                        min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                        max_aspect_ratio: float = 2.0):
    """One RandomIoUCrop trial per row of `scale_draws` / `position_draws` (..., 2) uniforms in [0, 1), as
    torchvision: crop w, h = int(W * r0), int(H * r1) with r in [min_scale, max_scale]; aspect ratio w/h in
    range; left, top = int((W - w) * p0), int((H - h) * p1); some box centre strictly inside; and one such box
    with IoU >= `min_iou` (broadcast against the trials).  Returns (ok, top, left, crop_h, crop_w): int32 (...).
    Only the real boxes (label > 0; a COCO image has ~7 of its 100 rows) are compared with the trials."""
    boxes, labels = _prepare(boxes, labels)
    boxes = tf.boolean_mask(boxes, labels > 0)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale = min_scale + (max_scale - min_scale) * scale_draws
    new_w, new_h = tf.floor(w_f * scale[..., 0]), tf.floor(h_f * scale[..., 1])
    aspect = new_w / tf.maximum(new_h, 1.0)  # exact enough: a ratio of small integers is never near a bound
    ok = (new_w > 0) & (new_h > 0) & (aspect >= min_aspect_ratio) & (aspect <= max_aspect_ratio)
    left = tf.floor((w_f - new_w) * position_draws[..., 0])
    top = tf.floor((h_f - new_h) * position_draws[..., 1])
    within = crop_within(boxes, tf.ones(tf.shape(boxes)[:1], tf.int32), top, left, new_h, new_w)
    ious = _box_iou(boxes, tf.stack([left, top, left + new_w, top + new_h], axis=-1))
    best = tf.reduce_max(tf.where(within, ious, -1.0), axis=-1)
    ok &= tf.reduce_any(within, axis=-1) & (best >= tf.cast(min_iou, tf.float32))
    as_int = lambda x: tf.cast(x, tf.int32)  # noqa: E731
    return ok, as_int(top), as_int(left), as_int(new_h), as_int(new_w)


def sample_iou_crop(boxes, labels, height, width, seed: Seed, *, sampler_options=IOU_CROP_OPTIONS,
                    trials: int = 40, rounds: int = 32, **limits):
    """RandomIoUCrop's parameters: (crop?, top, left, crop_h, crop_w, within).  torchvision loops until an
    option succeeds: it draws a minimum IoU from `sampler_options` (1.0 = no crop, done), then tries `trials`
    crops and takes the first that satisfies it, else draws another option.  Here `rounds` options x `trials`
    crops are drawn at once and the first success is taken; if none of the `rounds` succeeds there is no crop
    (what torchvision ends with when there are no boxes; with boxes only the 0.0 option can satisfy, 32 rounds
    all fail with probability (5/7)^32 = 2e-5)."""
    option_seed, scale_seed, position_seed = _seeds(seed, 3)
    options = tf.constant(sampler_options, tf.float32)
    min_iou = tf.gather(options, tf.random.stateless_uniform((rounds,), option_seed, 0, len(sampler_options),
                                                             dtype=tf.int32))
    ok, top, left, crop_h, crop_w = iou_crop_candidates(
        boxes, labels, height, width, min_iou[:, None], uniform(scale_seed, (rounds, trials, 2)),
        uniform(position_seed, (rounds, trials, 2)), **limits)
    done = (min_iou >= 1.0) | tf.reduce_any(ok, axis=-1)
    first = tf.argmax(tf.cast(done, tf.int32), output_type=tf.int32)
    trial = tf.argmax(tf.cast(ok[first], tf.int32), output_type=tf.int32)
    do_crop = tf.reduce_any(done) & (min_iou[first] < 1.0)
    chosen = top[first, trial], left[first, trial], crop_h[first, trial], crop_w[first, trial]
    boxes, labels = _prepare(boxes, labels)
    return (do_crop, *chosen, crop_within(boxes, labels, *chosen))


def random_iou_crop(image, boxes, labels, seed: Seed, mask=None, *, sampler_options=IOU_CROP_OPTIONS,
                    trials: int = 40, rounds: int = 32, min_scale: float = 0.3, max_scale: float = 1.0,
                    min_aspect_ratio: float = 0.5, max_aspect_ratio: float = 2.0):
    """SSD's RandomIoUCrop (torchvision.transforms.v2.RandomIoUCrop followed by SanitizeBoundingBoxes): a crop
    of 0.3-1x each side, aspect 0.5-2, holding some box centre, with IoU >= a random minimum (0, 0.1, 0.3, 0.5,
    0.7, 0.9; or no crop) with one of those boxes.  Boxes whose centres fall outside are dropped, the rest
    clipped to the crop; then boxes under 1 px are dropped.  Returns (image, boxes, labels, mask)."""
    boxes, labels = _prepare(boxes, labels)
    height, width = _hw(image)
    do_crop, top, left, crop_h, crop_w, within = sample_iou_crop(
        boxes, labels, height, width, seed, sampler_options=sampler_options, trials=trials, rounds=rounds,
        min_scale=min_scale, max_scale=max_scale, min_aspect_ratio=min_aspect_ratio,
        max_aspect_ratio=max_aspect_ratio)
    return apply_iou_crop(image, boxes, labels, mask, do_crop, top, left, crop_h, crop_w, within)


def apply_iou_crop(image, boxes, labels, mask, do_crop, top, left, crop_h, crop_w, within):
    """RandomIoUCrop's transform for `sample_iou_crop`'s parameters, then SanitizeBoundingBoxes."""
    boxes, labels = _prepare(boxes, labels)
    height, width = _hw(image)
    do_crop = tf.convert_to_tensor(do_crop, tf.bool)
    top, left = tf.where(do_crop, top, 0), tf.where(do_crop, left, 0)
    crop_h, crop_w = tf.where(do_crop, crop_h, height), tf.where(do_crop, crop_w, width)
    boxes, labels = _drop(boxes, labels, within | ~do_crop)
    image, boxes, labels, mask = crop(image, top, left, crop_h, crop_w, boxes, labels, mask)
    boxes, labels = sanitize_boxes(boxes, labels, crop_h, crop_w)
    return image, boxes, labels, mask


def _pad(image: tf.Tensor, top, bottom, left, right, fill) -> tf.Tensor:
    """Pad an (H, W) or (H, W, C) array with a per-channel constant."""
    paddings = [[top, bottom], [left, right]] + [[0, 0]] * (image.shape.rank - 2)
    inside = tf.pad(tf.ones(tf.shape(image)[:2], tf.bool), paddings[:2])
    fill = tf.cast(tf.round(tf.constant(fill, tf.float32)), image.dtype)
    if image.shape.rank == 3:
        inside = inside[..., None]
    return tf.where(inside, tf.pad(image, paddings), fill)


def random_zoom_out(image, boxes, labels, seed: Seed, mask=None, *, fill=SSD_MEAN, mask_fill: int = 0,
                    side_range: tuple[float, float] = (1.0, 4.0), p: float = 0.5):
    """torchvision's RandomZoomOut: with probability p, place the image at a random spot of a canvas r times
    its size (r uniform in `side_range`) filled with `fill` (the mask with `mask_fill`; torchvision's SSD
    recipe fills masks with 0).  Returns (image, boxes, labels, mask)."""
    boxes, labels = _prepare(boxes, labels)
    apply_seed, ratio_seed, position_seed = _seeds(seed, 3)
    height, width = _hw(image)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ratio = side_range[0] + uniform(ratio_seed) * (side_range[1] - side_range[0])
    canvas_w, canvas_h = tf.floor(w_f * ratio), tf.floor(h_f * ratio)
    position = uniform(position_seed, (2,))
    apply = uniform(apply_seed) < p
    left = tf.where(apply, tf.cast(tf.floor((canvas_w - w_f) * position[0]), tf.int32), 0)
    top = tf.where(apply, tf.cast(tf.floor((canvas_h - h_f) * position[1]), tf.int32), 0)
    right = tf.where(apply, tf.cast(canvas_w, tf.int32) - left - width, 0)
    bottom = tf.where(apply, tf.cast(canvas_h, tf.int32) - top - height, 0)
    image = _pad(image, top, bottom, left, right, fill)
    if mask is not None:
        mask = _pad(mask, top, bottom, left, right, mask_fill)
    offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
    boxes, labels = _drop(boxes + offset, labels, tf.ones_like(labels, tf.bool))
    return image, boxes, labels, mask


def horizontal_flip(image, boxes=None, labels=None, mask=None):
    """Mirror left-right: x -> W - x for boxes.  Returns (image, boxes, labels, mask)."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    image = tf.reverse(image, [1])  # ReverseV2's row-copy kernel: a negative-stride slice copies byte by byte
    if mask is not None:
        mask = tf.reverse(mask, [1])
    if boxes is not None:
        boxes, labels = _prepare(boxes, labels)
        x1, y1, x2, y2 = tf.unstack(boxes, axis=-1)
        boxes, labels = _drop(tf.stack([width - x2, y1, width - x1, y2], axis=-1), labels,
                              tf.ones_like(labels, tf.bool))
    return image, boxes, labels, mask


def random_horizontal_flip(image, boxes, labels, seed: Seed, mask=None, p: float = 0.5):
    """horizontal_flip with probability p (boxes/labels may be None for segmentation)."""
    flip = uniform(seed) < p
    has_boxes, has_mask = boxes is not None, mask is not None
    if has_boxes:
        boxes, labels = _prepare(boxes, labels)
    args = [a for a in (image, boxes, labels, mask) if a is not None]

    def unpack(values):
        values = list(values)
        out_image = values.pop(0)
        out_boxes = values.pop(0) if has_boxes else None
        out_labels = values.pop(0) if has_boxes else None
        return out_image, out_boxes, out_labels, values.pop(0) if has_mask else None

    def flipped():
        return [a for a in horizontal_flip(image, boxes, labels, mask) if a is not None]

    return unpack(tf.cond(flip, flipped, lambda: args))


def resize(image, size: Size, boxes=None, labels=None, mask=None, antialias: bool = False):
    """Resize to exactly `size` (h, w): bilinear image (half-pixel centres, rounded to uint8), boxes scaled,
    mask nearest.  antialias=False is torchvision's detection model transform (F.interpolate bilinear);
    antialias=True its segmentation reference (PIL's antialiased bilinear, as `resample` computes it)."""
    out_h, out_w = _pair(size)
    height, width = _hw(image)
    if antialias:
        resized = pillow_resize(image, out_h, out_w)
    else:
        resized = tf.ensure_shape(_to_uint8(tf.image.resize(image, (out_h, out_w), "bilinear")),  # uint8 in: no copy
                                  (out_h, out_w, 3))
    if mask is not None:
        mask = tf.ensure_shape(tf.image.resize(mask[..., None], (out_h, out_w), "nearest")[..., 0], (out_h, out_w))
    if boxes is not None:
        boxes, labels = _prepare(boxes, labels)
        # x * out / in (not x * (out / in)): an edge at the input's border lands exactly on the output's
        out_size = tf.constant([out_w, out_h] * 2, tf.float32)
        boxes = tf.minimum(boxes * out_size / tf.cast(tf.stack([width, height] * 2), tf.float32), out_size)
    return resized, boxes, labels, mask


# ------------------------------------------------------------------------------------- photometric
def _gray(image: tf.Tensor) -> tf.Tensor:
    """torchvision's rgb_to_grayscale of a uint8 image, floored (as its contrast/saturation kernels do)."""
    r, g, b = tf.unstack(tf.cast(image, tf.float32), axis=-1)
    return tf.floor(r * 0.2989 + g * 0.587 + b * 0.114)


def _torch_blend(image: tf.Tensor, other: tf.Tensor, ratio: tf.Tensor) -> tf.Tensor:
    """torchvision's _blend on uint8: image * ratio + other * (1 - ratio), clamped, truncated."""
    ratio = tf.cast(ratio, tf.float32)
    out = tf.cast(image, tf.float32) * ratio + tf.cast(other, tf.float32) * (1.0 - ratio)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def adjust_brightness(image, factor) -> tf.Tensor:
    out = tf.cast(image, tf.float32) * tf.cast(factor, tf.float32)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def adjust_contrast(image, factor) -> tf.Tensor:
    return _torch_blend(image, tf.reduce_mean(_gray(image)), factor)


def adjust_saturation(image, factor) -> tf.Tensor:
    return _torch_blend(image, _gray(image)[..., None], factor)


def _rgb_to_hsv(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    r, g, b = tf.unstack(image, axis=-1)
    maxc, minc = tf.reduce_max(image, axis=-1), tf.reduce_min(image, axis=-1)
    eqc = maxc == minc
    channels_range = maxc - minc
    s = channels_range / tf.where(eqc, 1.0, maxc)
    divisor = tf.where(eqc, 1.0, channels_range)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    neq_r, eq_g = maxc != r, maxc == g
    as_f = lambda m: tf.cast(m, tf.float32)  # noqa: E731
    hg = (rc + 2.0 - bc) * as_f(eq_g & neq_r)
    hr = (bc - gc) * as_f(~neq_r)
    hb = (gc + 4.0 - rc) * as_f(neq_r & ~eq_g)
    h = tf.math.floormod((hr + hg + hb) * (1.0 / 6.0) + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: tf.Tensor, s: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    h6 = h * 6.0
    i = tf.floor(h6)
    f = h6 - i
    i = tf.math.floormod(tf.cast(i, tf.int32), 6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = tf.clip_by_value((1.0 - sxf) * v, 0.0, 1.0)
    t = tf.clip_by_value((sxf + one_minus_s) * v, 0.0, 1.0)
    p = tf.clip_by_value(one_minus_s * v, 0.0, 1.0)
    vpqt = tf.stack([v, p, q, t], axis=-1)
    select = tf.constant([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], tf.int32)  # i -> rgb
    return tf.gather(vpqt, tf.gather(select, i), batch_dims=i.shape.rank)


def adjust_hue(image, factor) -> tf.Tensor:
    """torchvision's adjust_hue on uint8 (its own RGB<->HSV, then x * 255.999 truncated)."""
    h, s, v = _rgb_to_hsv(tf.cast(image, tf.float32) * (1.0 / 255.0))
    h = tf.math.floormod(h + tf.cast(factor, tf.float32), 1.0)
    return tf.cast(_hsv_to_rgb(h, s, v) * (255.0 + 1.0 - 1e-3), tf.uint8)


def photometric_distort(image, seed: Seed, *, brightness=(0.875, 1.125), contrast=(0.5, 1.5),
                        saturation=(0.5, 1.5), hue=(-0.05, 0.05), p: float = 0.5) -> tf.Tensor:
    """torchvision's RandomPhotometricDistort on a uint8 image: each of brightness, contrast, saturation, hue
    with probability p and a factor uniform in its range, contrast before or after saturation/hue (1/2), then a
    random channel permutation with probability p."""
    s = _seeds(seed, 11)
    image = tf.convert_to_tensor(image)

    def maybe(apply_seed, factor_seed, low_high, kernel, image):
        factor = uniform(factor_seed, (), *low_high)
        return tf.cond(uniform(apply_seed) < p, lambda: kernel(image, factor), lambda: image)

    contrast_before = uniform(s[8]) < 0.5
    image = maybe(s[0], s[1], brightness, adjust_brightness, image)
    image = tf.cond(contrast_before, lambda: maybe(s[2], s[3], contrast, adjust_contrast, image), lambda: image)
    image = maybe(s[4], s[5], saturation, adjust_saturation, image)
    image = maybe(s[6], s[7], hue, adjust_hue, image)
    image = tf.cond(contrast_before, lambda: image, lambda: maybe(s[2], s[3], contrast, adjust_contrast, image))
    permutation = tf.argsort(uniform(s[9], (3,)))
    return tf.cond(uniform(s[10]) < p, lambda: tf.gather(image, permutation, axis=-1), lambda: image)


# ------------------------------------------------------------------------------------ segmentation
class SegmentationGeometry(NamedTuple):
    """The segmentation reference's draws: RandomResize's size, RandomHorizontalFlip, RandomCrop's corner (in
    the flipped image padded bottom/right up to the crop size)."""
    height: tf.Tensor
    width: tf.Tensor
    flip: tf.Tensor
    top: tf.Tensor
    left: tf.Tensor


def segmentation_geometry(height, width, seed: Seed, min_size: int, max_size: int, crop_size: Size,
                          hflip_prob: float) -> SegmentationGeometry:
    """RandomResize: the shorter side to an integer uniform in [min_size, max_size], the longer one
    int(size * long / short); then the flip with probability hflip_prob; then RandomCrop's uniform corner."""
    resize_seed, flip_seed, crop_seed = _seeds(seed, 3)
    short = _randint_between(resize_seed, min_size, max_size + 1)
    h64, w64, short64 = (tf.cast(x, tf.float64) for x in (height, width, short))
    new_h = tf.where(height <= width, short, tf.cast(tf.floor(short64 * h64 / w64), tf.int32))
    new_w = tf.where(height <= width, tf.cast(tf.floor(short64 * w64 / h64), tf.int32), short)
    crop_h, crop_w = _pair(crop_size)
    top_seed, left_seed = _seeds(crop_seed, 2)
    top = _randint_between(top_seed, 0, tf.maximum(new_h, crop_h) - crop_h + 1)
    left = _randint_between(left_seed, 0, tf.maximum(new_w, crop_w) - crop_w + 1)
    return SegmentationGeometry(new_h, new_w, uniform(flip_seed) < hflip_prob, top, left)


def _nearest_indices(start, stop, in_size, out_size) -> tf.Tensor:
    """tf.image.resize's nearest neighbour (half-pixel centres, float32) for outputs start..stop-1."""
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    index = tf.floor((tf.cast(tf.range(start, stop), tf.float32) + 0.5) * scale)
    return tf.minimum(tf.cast(index, tf.int32), in_size - 1)


def _crop_of_resize(image: np.ndarray, height, width, row_start, row_stop, col_start, col_stop, mirror,
                    crop_height, crop_width) -> np.ndarray:
    """The window of the resized image (mirrored), zero-padded bottom/right to the crop."""
    window = resample.resize_bilinear(image, int(height), int(width), (int(row_start), int(row_stop)),
                                      (int(col_start), int(col_stop)), mirror=bool(mirror))
    if window.shape[:2] == (crop_height, crop_width):
        return window
    out = np.zeros((crop_height, crop_width, 3), np.uint8)
    out[:window.shape[0], :window.shape[1]] = window
    return out


def resize_flip_crop(image, mask, geometry: SegmentationGeometry, crop_size: Size, mask_fill: int = IGNORE):
    """Resize (image antialiased bilinear as Pillow, mask nearest), flip, pad bottom/right up to the crop (image
    0, mask `mask_fill`) and crop, as the reference does them one after the other, but computing only the crop: the
    window of the resized image that it keeps, resized mirrored when flipped, then padded.  A 0.5-2x random resize
    of a 520-pixel base followed by a 480 crop otherwise resizes, flips and pads up to 4x the pixels it keeps."""
    crop_h, crop_w = _pair(crop_size)
    height, width = _hw(image)
    row_stop = tf.minimum(geometry.top + crop_h, geometry.height)
    flipped_stop = tf.minimum(geometry.left + crop_w, geometry.width)  # the window's columns in the flipped image
    col_start = tf.where(geometry.flip, geometry.width - flipped_stop, geometry.left)
    col_stop = tf.where(geometry.flip, geometry.width - geometry.left, flipped_stop)
    image = tf.numpy_function(_crop_of_resize, [image, geometry.height, geometry.width, geometry.top, row_stop,
                                                col_start, col_stop, geometry.flip, crop_h, crop_w],
                              tf.uint8, stateful=False)
    rows = _nearest_indices(geometry.top, row_stop, height, geometry.height)
    cols = _nearest_indices(col_start, col_stop, width, geometry.width)
    cols = tf.cond(geometry.flip, lambda: cols[::-1], lambda: cols)
    mask = tf.gather(tf.gather(mask, rows), cols, axis=1)
    padding = [[0, crop_h - (row_stop - geometry.top)], [0, crop_w - (col_stop - col_start)]]
    mask = tf.pad(mask, padding, constant_values=tf.cast(mask_fill, mask.dtype))
    return tf.ensure_shape(image, (crop_h, crop_w, 3)), tf.ensure_shape(mask, (crop_h, crop_w))


# ------------------------------------------------------------------------------------------- recipes
def _detection_output(image, boxes, labels, mask) -> dict[str, tf.Tensor]:
    num = boxes.shape[0]
    out = {"image": image, "boxes": tf.ensure_shape(boxes, (num, 4)), "labels": tf.ensure_shape(labels, (num,)),
           "box_mask": labels > 0}
    if mask is not None:
        out["mask"] = mask
    return out


def ssdlite_train(image, boxes, labels, seed: Seed, size: Size = 320, mask=None, hflip_prob: float = 0.5
                  ) -> dict[str, tf.Tensor]:
    """torchvision's 'ssdlite' detection recipe: RandomIoUCrop, RandomHorizontalFlip, (SanitizeBoundingBoxes),
    then the SSDlite model transform's plain resize to `size` (320).  Boxes keep their row count."""
    crop_seed, flip_seed = _seeds(seed, 2)
    image, boxes, labels, mask = random_iou_crop(image, boxes, labels, crop_seed, mask)
    image, boxes, labels, mask = random_horizontal_flip(image, boxes, labels, flip_seed, mask, hflip_prob)
    return _detection_output(*resize(image, size, boxes, labels, mask))


def ssd_train(image, boxes, labels, seed: Seed, size: Size = 300, mask=None, hflip_prob: float = 0.5,
              mean=SSD_MEAN) -> dict[str, tf.Tensor]:
    """torchvision's 'ssd' detection recipe: RandomPhotometricDistort, RandomZoomOut(fill=mean; masks 0),
    RandomIoUCrop, RandomHorizontalFlip, (SanitizeBoundingBoxes), then the plain resize to `size`."""
    color_seed, zoom_seed, crop_seed, flip_seed = _seeds(seed, 4)
    image = photometric_distort(image, color_seed)
    image, boxes, labels, mask = random_zoom_out(image, boxes, labels, zoom_seed, mask, fill=mean)
    image, boxes, labels, mask = random_iou_crop(image, boxes, labels, crop_seed, mask)
    image, boxes, labels, mask = random_horizontal_flip(image, boxes, labels, flip_seed, mask, hflip_prob)
    return _detection_output(*resize(image, size, boxes, labels, mask))


def detection_eval(image, boxes, labels, size: Size = 320, mask=None) -> dict[str, tf.Tensor]:
    """The SSD/SSDlite model transform alone: a plain resize to `size`, boxes scaled (none dropped)."""
    return _detection_output(*resize(image, size, boxes, labels, mask))


def segmentation_train(image, mask, seed: Seed, base_size: int = 520, crop_size: Size = 480,
                       hflip_prob: float = 0.5, scale: Sequence[float] = (0.5, 2.0)) -> dict[str, tf.Tensor]:
    """torchvision's segmentation reference (SegmentationPresetTrain): RandomResize(0.5-2x base_size, shorter
    side; `scale`), RandomHorizontalFlip, RandomCrop(crop_size, pad image 0 / mask 255)."""
    height, width = _hw(image)
    geometry = segmentation_geometry(height, width, seed, int(scale[0] * base_size), int(scale[1] * base_size),
                                     crop_size, hflip_prob)
    image, mask = resize_flip_crop(image, mask, geometry, crop_size)
    return {"image": image, "mask": mask}


def segmentation_eval(image, mask, size: Size) -> dict[str, tf.Tensor]:
    """Resize image (antialiased bilinear) and mask (nearest) to `size`: the reference's eval resize
    (shorter side to base_size) for square images, and a fixed shape for batching otherwise."""
    image, _, _, mask = resize(image, size, mask=mask, antialias=True)
    return {"image": image, "mask": mask}
