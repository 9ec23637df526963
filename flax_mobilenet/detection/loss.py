"""SSD training loss, as torchvision's `SSD.compute_loss` (with its `SSDMatcher` matching).

bbox_regression: smooth L1 (beta 1, summed) between the predicted codes of the foreground anchors and
their matched boxes encoded on them (`BoxCoder((10, 10, 5, 5))`). classification: cross-entropy summed
over the foreground anchors plus the hard negatives: per image, the anchors ranked (stable, decreasing)
by cross-entropy with the foreground ones at -inf, those ranked below neg_to_pos_ratio * #foreground
(torchvision does not drop the foreground ones from that set when it runs past the negatives; neither
does this). Both are divided by max(1, #foreground anchors over the batch).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from .box_coder import encode
from .matching import match_anchors


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
    """torch.nn.functional.smooth_l1_loss's elementwise term: 0.5 x^2 / beta where |x| < beta, else |x| - beta / 2."""
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def ssd_loss(bbox_regression: jax.Array, cls_logits: jax.Array, anchors: jax.Array, gt_boxes: jax.Array,
             gt_labels: jax.Array, gt_valid: jax.Array, matched_idxs: Optional[jax.Array] = None,
             iou_threshold: float = 0.5, neg_to_pos_ratio: float = 3.0) -> dict[str, jax.Array]:
    """bbox_regression (N, A, 4), cls_logits (N, A, C), anchors (A, 4) or (N, A, 4) xyxy pixels, padded
    ground truth gt_boxes (N, M, 4), gt_labels (N, M) ints (1..C-1), gt_valid (N, M) bool;
    matched_idxs (N, A) from `match_anchors` (computed when None).
    -> {'bbox_regression': scalar, 'classification': scalar}. Jit-able; gradients as torch's."""
    n, a, c = cls_logits.shape
    anchors = jnp.broadcast_to(jnp.asarray(anchors, bbox_regression.dtype), (n, a, 4))
    if matched_idxs is None:
        matched_idxs = match_anchors(gt_boxes, gt_valid, anchors, iou_threshold)
    foreground = matched_idxs >= 0  # (N, A)
    num_foreground = jnp.sum(foreground)
    safe_idx = jnp.maximum(matched_idxs, 0)

    # Regression: background anchors get their own anchor as target (finite, then masked out).
    matched_boxes = jnp.take_along_axis(gt_boxes, safe_idx[..., None], axis=1)
    matched_boxes = jnp.where(foreground[..., None], matched_boxes, anchors)
    targets = jax.lax.stop_gradient(encode(matched_boxes, anchors))
    box_loss = jnp.sum(jnp.where(foreground[..., None], smooth_l1(bbox_regression - targets), 0.0))

    # Classification with hard negative mining.
    cls_targets = jnp.where(foreground, jnp.take_along_axis(gt_labels, safe_idx, axis=1), 0)
    log_probs = jax.nn.log_softmax(cls_logits, axis=-1)
    # The target's log-probability as a one-hot sum (exact: one term, the others +-0), not a gather: the
    # gather's gradient, a scatter into the head's outputs, took the SSDLite train step's compile on XLA:CPU
    # from ~55 to ~110 s (benchmarks/compile_time.py).
    one_hot = jax.nn.one_hot(cls_targets, c, dtype=jnp.bool_)
    cls_loss = -jnp.sum(jnp.where(one_hot, log_probs, 0.0), axis=-1)
    positive = cls_targets > 0
    num_negative = neg_to_pos_ratio * jnp.sum(positive, axis=1, keepdims=True)
    negative_loss = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(cls_loss))
    order = jnp.argsort(negative_loss, axis=1, descending=True, stable=True)
    rank = jnp.argsort(order, axis=1)  # the inverse permutation: each anchor's place in that order
    hard_negative = rank < num_negative
    cls_sum = jnp.sum(jnp.where(positive, cls_loss, 0.0)) + jnp.sum(jnp.where(hard_negative, cls_loss, 0.0))
    normalizer = jnp.maximum(1, num_foreground).astype(cls_loss.dtype)
    return {"bbox_regression": box_loss / normalizer, "classification": cls_sum / normalizer}
