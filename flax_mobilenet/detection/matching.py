"""SSD target assignment, as torchvision's `det_utils.SSDMatcher(0.5)` on `box_iou(gt_boxes, anchors)`.

Each anchor takes its best ground-truth box (first on ties) if their IoU >= `iou_threshold`, else -1
(background); then every ground-truth box claims its best anchor (first on ties), the later box
winning when two claim the same anchor (torch's in-order index_put_). Images with no ground truth get
all -1. Ground truth is padded: (N, M, 4) boxes with an (N, M) validity mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .boxes import box_iou


def match_anchors(gt_boxes: jax.Array, gt_valid: jax.Array, anchors: jax.Array,
                  iou_threshold: float = 0.5) -> jax.Array:
    """gt_boxes (N, M, 4), gt_valid (N, M) bool, anchors (A, 4) or (N, A, 4) -> (N, A) int32 matched
    ground-truth index, -1 for background."""
    n, m = gt_valid.shape
    anchors = jnp.broadcast_to(jnp.asarray(anchors, gt_boxes.dtype), (n, anchors.shape[-2], 4))
    gt_valid = gt_valid.astype(bool)
    quality = jnp.where(gt_valid[..., None], box_iou(gt_boxes, anchors), -1.0)  # (N, M, A); padding never wins
    if m == 0:
        return jnp.full((n, anchors.shape[1]), -1, jnp.int32)
    matched_vals = jnp.max(quality, axis=1)
    matches = jnp.argmax(quality, axis=1).astype(jnp.int32)
    matches = jnp.where(matched_vals < iou_threshold, -1, matches)
    best_anchor = jnp.argmax(quality, axis=2)  # (N, M)
    claims = gt_valid[..., None] & (best_anchor[..., None] == jnp.arange(anchors.shape[1]))  # (N, M, A)
    claimer = jnp.max(jnp.where(claims, jnp.arange(m, dtype=jnp.int32)[:, None], -1), axis=1)
    return jnp.where(claimer >= 0, claimer, matches)
