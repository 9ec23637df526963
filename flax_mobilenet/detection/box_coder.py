"""SSD's box coding, as torchvision's `det_utils.BoxCoder(weights=(10, 10, 5, 5))`.

`encode` is `BoxCoder.encode_single(reference_boxes, proposals)` (targets of `reference_boxes` relative to
`proposals`, e.g. matched ground truth relative to anchors), `decode` is `BoxCoder.decode_single`. Both
take any leading dimensions and keep torchvision's float operation order.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SSD_BOX_WEIGHTS: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
BBOX_XFORM_CLIP: float = math.log(1000.0 / 16)


def encode(reference_boxes: jax.Array, proposals: jax.Array,
           weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS) -> jax.Array:
    """(..., 4) xyxy boxes and (..., 4) xyxy proposals (anchors) -> (..., 4) (dx, dy, dw, dh) targets."""
    dtype = reference_boxes.dtype
    wx, wy, ww, wh = (jnp.asarray(w, dtype) for w in weights)
    px1, py1, px2, py2 = (proposals[..., i] for i in range(4))
    gx1, gy1, gx2, gy2 = (reference_boxes[..., i] for i in range(4))
    ex_w, ex_h = px2 - px1, py2 - py1
    ex_cx, ex_cy = px1 + 0.5 * ex_w, py1 + 0.5 * ex_h
    gt_w, gt_h = gx2 - gx1, gy2 - gy1
    gt_cx, gt_cy = gx1 + 0.5 * gt_w, gy1 + 0.5 * gt_h
    dx = wx * (gt_cx - ex_cx) / ex_w
    dy = wy * (gt_cy - ex_cy) / ex_h
    dw = ww * jnp.log(gt_w / ex_w)
    dh = wh * jnp.log(gt_h / ex_h)
    return jnp.stack((dx, dy, dw, dh), axis=-1)


def decode(rel_codes: jax.Array, boxes: jax.Array, weights: tuple[float, float, float, float] = SSD_BOX_WEIGHTS,
           bbox_xform_clip: float = BBOX_XFORM_CLIP) -> jax.Array:
    """(..., 4) codes relative to (..., 4) xyxy boxes (anchors; broadcast) -> (..., 4) xyxy boxes.

    dw, dh are clamped from above at `bbox_xform_clip` (log(1000 / 16)) before the exp.
    """
    dtype = rel_codes.dtype
    boxes = boxes.astype(dtype)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    wx, wy, ww, wh = (np.asarray(w, dtype) for w in weights)
    clip = np.asarray(bbox_xform_clip, dtype)
    dx = rel_codes[..., 0] / wx
    dy = rel_codes[..., 1] / wy
    dw = jnp.minimum(rel_codes[..., 2] / ww, clip)
    dh = jnp.minimum(rel_codes[..., 3] / wh, clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (jnp.exp(dw) * widths)
    half_h = 0.5 * (jnp.exp(dh) * heights)
    return jnp.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), axis=-1)
