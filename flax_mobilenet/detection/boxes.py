"""Box arithmetic in xyxy pixels, with torchvision.ops' float operation order (so results agree to the bit)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def box_area(boxes: jax.Array) -> jax.Array:
    """(..., 4) xyxy -> (...): (x2 - x1) * (y2 - y1), as `torchvision.ops.box_area`."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: jax.Array, boxes2: jax.Array) -> jax.Array:
    """Pairwise IoU (..., N, 4) x (..., M, 4) -> (..., N, M), as `torchvision.ops.box_iou`.

    inter / (area1 + area2 - inter): the same expression as torchvision's CPU NMS kernel, whose
    `inter / (iarea + areas[j] - inter)` rounds identically.
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = jnp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = jnp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = jnp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union


def _sizes(image_size, ndim_boxes: int) -> tuple[jax.Array, jax.Array]:
    """(height, width) as float32 arrays broadcastable against boxes[..., k] of rank `ndim_boxes - 1`.

    `image_size` is (h, w) for all images or (N, 2) per image (boxes then (N, ..., 4)).
    """
    size = jnp.asarray(image_size, jnp.float32)
    if size.ndim == 1:
        return size[0], size[1]
    extra = (1,) * (ndim_boxes - 2)
    return size[:, 0].reshape(-1, *extra), size[:, 1].reshape(-1, *extra)


def clip_boxes_to_image(boxes: jax.Array, image_size) -> jax.Array:
    """Clamp x to [0, width] and y to [0, height], as `torchvision.ops.clip_boxes_to_image`.

    `image_size`: (height, width), or (N, 2) per image with boxes (N, ..., 4).
    """
    height, width = _sizes(image_size, boxes.ndim)
    return jnp.stack((jnp.clip(boxes[..., 0], 0.0, width), jnp.clip(boxes[..., 1], 0.0, height),
                      jnp.clip(boxes[..., 2], 0.0, width), jnp.clip(boxes[..., 3], 0.0, height)), axis=-1)


def resize_boxes(boxes: jax.Array, from_size, to_size) -> jax.Array:
    """Rescale xyxy boxes from an image of `from_size` (h, w) to one of `to_size`, as torchvision's
    `transform.resize_boxes` (the last step of `GeneralizedRCNNTransform.postprocess`): the ratios are
    float32 to / float32 from. Sizes are (h, w) or (N, 2) per image with boxes (N, K, 4)."""
    from_h, from_w = _sizes(from_size, boxes.ndim)
    to_h, to_w = _sizes(to_size, boxes.ndim)
    ratio_h, ratio_w = to_h / from_h, to_w / from_w
    return jnp.stack((boxes[..., 0] * ratio_w, boxes[..., 1] * ratio_h,
                      boxes[..., 2] * ratio_w, boxes[..., 3] * ratio_h), axis=-1)


def float32_above(threshold: float) -> np.float32:
    """The float32 t such that, for float32 x, `x > t` equals the double comparison `x > threshold`
    (torchvision's NMS kernel compares its float IoU with a double threshold)."""
    t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return t
