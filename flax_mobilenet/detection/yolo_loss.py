"""The anchor-free YOLO training loss (ultralytics 8.4 `utils/loss.py` `v8DetectionLoss` with `utils/tal.py`
`TaskAlignedAssigner`) in pure JAX: static shapes, jit-able, float32, the reference's values and gradients.

Assignment (no gradient; predicted boxes and sigmoid scores detached, all in input pixels), per image and
ground-truth box (padded rows masked out):
- candidates: anchor centres strictly inside the box, after a side shorter than `min_side` (8.4: the model's
  second stride, 16) is widened to it about the box centre, so that tiny boxes still reach a few anchors;
- align metric = score(box class)^alpha * CIoU(box, prediction)^beta over the candidates (CIoU clamped at 0);
- each box keeps its `topk` best candidates; an anchor kept by several boxes goes to the box whose CIoU with its
  prediction is highest among all boxes containing it (the first such box on ties), as the reference does;
- target score of a positive anchor: one-hot(class) * align * (the box's largest CIoU over its positives) /
  (the box's largest align over its positives + eps).

Losses (sum over the batch, each divided by max(sum of target scores, 1)): BCE-with-logits of every class logit
against the target scores; (1 - CIoU) of the positives' decoded boxes (grid units) weighted by their target score;
DFL: per side, cross-entropy to the two bins around the target distance (clamped to reg_max - 1.01) weighted by
closeness, averaged over the 4 sides, weighted as the box loss.  Items are gain-scaled (box 7.5, cls 0.5, dfl 1.5);
the total is their sum times the batch size, as the reference's trainer backpropagates.

Ties the reference leaves to `torch.topk`'s CPU algorithm (anchors whose align metric is exactly 0, i.e. CIoU <= 0,
filling a box's top-k when it has fewer than `topk` candidates with a positive metric) are taken here lowest index
first; such anchors have target score 0, so they change nothing unless they make an anchor contested.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp

YOLOV8_GAINS: Mapping[str, float] = {"box": 7.5, "cls": 0.5, "dfl": 1.5}  # ultralytics cfg/default.yaml


def complete_iou(box1: jax.Array, box2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """CIoU of xyxy boxes (broadcast over leading axes; -> (...,)), ultralytics' `bbox_iou(xywh=False, CIoU=True)`
    operation for operation: eps on the heights, the union and the enclosing diagonal, and the aspect-ratio weight
    alpha = v / (1 - IoU + v + eps) treated as a constant (no gradient), as the reference does."""
    b1_x1, b1_y1, b1_x2, b1_y2 = (box1[..., k] for k in range(4))
    b2_x1, b2_y1, b2_x2, b2_y2 = (box2[..., k] for k in range(4))
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    clamp = lambda x: jnp.where(x >= 0, x, 0.0)  # noqa: E731  (torch's clamp(min=0): gradient passes at 0)
    inter = clamp(jnp.minimum(b1_x2, b2_x2) - jnp.maximum(b1_x1, b2_x1)) * \
        clamp(jnp.minimum(b1_y2, b2_y2) - jnp.maximum(b1_y1, b2_y1))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = jnp.maximum(b1_x2, b2_x2) - jnp.minimum(b1_x1, b2_x1)
    ch = jnp.maximum(b1_y2, b2_y2) - jnp.minimum(b1_y1, b2_y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
    alpha = jax.lax.stop_gradient(v / (1 - iou + v + eps))
    return iou - (rho2 / c2 + v * alpha)


def decode_distances(box_distributions: jax.Array, points: jax.Array, reg_max: int) -> jax.Array:
    """(N, A, 4 * reg_max) logits (channel = side * reg_max + bin, sides l, t, r, b) -> (N, A, 4) xyxy boxes in
    grid units: each side's expected bin under its softmax, off the anchor point (ultralytics' `bbox_decode`)."""
    n, a, _ = box_distributions.shape
    probabilities = jax.nn.softmax(box_distributions.reshape(n, a, 4, reg_max), axis=-1)
    distances = probabilities @ jnp.arange(reg_max, dtype=probabilities.dtype)
    return jnp.concatenate([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def task_aligned_assign(scores: jax.Array, pred_boxes: jax.Array, points: jax.Array, gt_boxes: jax.Array,
                        gt_classes: jax.Array, gt_mask: jax.Array, *, min_side: float, topk: int = 10,
                        alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ultralytics' TaskAlignedAssigner on fixed shapes (see the module docstring).  scores (N, A, C) sigmoid,
    pred_boxes (N, A, 4) xyxy pixels, points (A, 2) anchor centres in pixels, gt_boxes (N, M, 4) xyxy pixels,
    gt_classes (N, M) 0-based, gt_mask (N, M) bool.  -> target boxes (N, A, 4) pixels, target scores (N, A, C),
    foreground (N, A) bool.  No gradient flows through it."""
    scores, pred_boxes, gt_boxes = (jax.lax.stop_gradient(x) for x in (scores, pred_boxes, gt_boxes))
    n, a, c = scores.shape
    m = gt_boxes.shape[1]

    # Candidates: centres strictly inside the box, its sides under min_side widened (the reference's
    # xyxy -> xywh -> floor -> xyxy round trip, kept for its rounding).
    centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    size = gt_boxes[..., 2:] - gt_boxes[..., :2]
    size = jnp.where((size < min_side) & gt_mask[..., None], jnp.float32(min_side), size)
    half = size / 2
    top_left, bottom_right = centre - half, centre + half  # (N, M, 2)
    px, py = points[:, 0], points[:, 1]
    inside = ((px - top_left[..., 0:1] > eps) & (py - top_left[..., 1:2] > eps)
              & (bottom_right[..., 0:1] - px > eps) & (bottom_right[..., 1:2] - py > eps))  # (N, M, A)
    candidate = inside & gt_mask[..., None]

    # Align metric of the candidates: score of the box's class ^ alpha * CIoU ^ beta.
    overlaps = jnp.where(candidate, jnp.maximum(complete_iou(gt_boxes[:, :, None], pred_boxes[:, None]), 0.0), 0.0)
    class_scores = jnp.take_along_axis(jnp.swapaxes(scores, 1, 2), gt_classes[..., None], axis=1)  # (N, M, A)
    score_term = jnp.sqrt(class_scores) if alpha == 0.5 else class_scores ** alpha
    align = jnp.where(candidate, score_term * overlaps ** beta, 0.0)

    # Each box's top-k anchors (by align metric), kept where they are candidates.
    _, top = jax.lax.top_k(align, min(topk, a))  # (N, M, k)
    chosen = jnp.zeros((n, m, a), bool).at[jnp.arange(n)[:, None, None], jnp.arange(m)[None, :, None], top].set(True)
    positive = chosen & candidate

    # An anchor claimed by several boxes goes to the box of highest overlap (over all boxes).
    contested = jnp.sum(positive, axis=1) > 1  # (N, A)
    best = jnp.argmax(overlaps, axis=1)  # (N, A), first on ties
    is_best = jnp.arange(m)[None, :, None] == best[:, None, :]
    positive = jnp.where(contested[:, None, :], is_best, positive)
    foreground = jnp.any(positive, axis=1)
    gt_index = jnp.argmax(positive, axis=1)  # (N, A); 0 for background anchors (masked out below)

    target_boxes = jnp.take_along_axis(gt_boxes, gt_index[..., None], axis=1)  # (N, A, 4)
    target_classes = jnp.take_along_axis(gt_classes, gt_index, axis=1)
    one_hot = jax.nn.one_hot(target_classes, c, dtype=scores.dtype) * foreground[..., None]

    # Soft targets: align rescaled per box so that its best positive gets the box's best CIoU.
    align = align * positive
    best_align = jnp.max(align, axis=-1, keepdims=True)
    best_overlap = jnp.max(overlaps * positive, axis=-1, keepdims=True)
    normalized = jnp.max(align * best_overlap / (best_align + eps), axis=1)  # (N, A)
    return target_boxes, one_hot * normalized[..., None], foreground


def distribution_focal_loss(box_distributions: jax.Array, targets: jax.Array, reg_max: int) -> jax.Array:
    """(N, A, 4 * reg_max) logits and (N, A, 4) target distances (grid units) -> (N, A): per side, cross-entropy
    to the bins floor(t) and floor(t) + 1 weighted by closeness (t clamped to [0, reg_max - 1.01]), mean over the
    4 sides (ultralytics' `DFLoss`)."""
    n, a, _ = box_distributions.shape
    targets = jnp.clip(targets, 0.0, reg_max - 1 - 0.01)
    left = jnp.floor(targets).astype(jnp.int32)
    right = left + 1
    weight_left = right.astype(targets.dtype) - targets
    weight_right = 1 - weight_left
    log_p = jax.nn.log_softmax(box_distributions.reshape(n, a, 4, reg_max), axis=-1)

    def pick(bins: jax.Array) -> jax.Array:  # a one-hot sum, not a gather (exact; compiles faster): see ssd_loss
        return jnp.sum(jnp.where(jax.nn.one_hot(bins, reg_max, dtype=jnp.bool_), log_p, 0.0), axis=-1)

    return -jnp.mean(pick(left) * weight_left + pick(right) * weight_right, axis=-1)


def yolov8_loss(box_distributions: jax.Array, class_logits: jax.Array, points: jax.Array, strides: jax.Array,
                gt_boxes: jax.Array, gt_classes: jax.Array, gt_mask: jax.Array, *, reg_max: int = 16,
                min_side: float = 16.0, box: float = YOLOV8_GAINS["box"], cls: float = YOLOV8_GAINS["cls"],
                dfl: float = YOLOV8_GAINS["dfl"], topk: int = 10) -> dict[str, jax.Array]:
    """ultralytics 8.4's v8DetectionLoss.  box_distributions (N, A, 4 * reg_max) and class_logits (N, A, C) are
    the head's raw outputs (float32), points (A, 2) anchor centres in grid units and strides (A, 1) their strides
    (`heads.yolo_detect.anchor_points`), gt_boxes (N, M, 4) xyxy input pixels, gt_classes (N, M) 0-based ints,
    gt_mask (N, M) bool (False rows: padding, any content).  min_side: the assigner's smallest box side (the
    second level's stride).  -> {'box_loss', 'class_loss', 'dfl_loss'} (gain-scaled, as the reference's
    detached items) and 'total' = their sum times N (what the reference's trainer backpropagates)."""
    n, _, num_classes = class_logits.shape
    points = jnp.asarray(points, jnp.float32)
    strides = jnp.asarray(strides, jnp.float32)
    gt_mask = jnp.asarray(gt_mask, bool)
    gt_boxes = jnp.where(gt_mask[..., None], gt_boxes, 0.0).astype(jnp.float32)  # padding: zeros, as the reference
    gt_classes = jnp.clip(jnp.where(gt_mask, gt_classes, 0), 0, num_classes - 1).astype(jnp.int32)

    pred_boxes = decode_distances(box_distributions, points, reg_max)  # grid units
    target_boxes, target_scores, foreground = task_aligned_assign(
        jax.nn.sigmoid(class_logits), pred_boxes * strides, points * strides, gt_boxes, gt_classes, gt_mask,
        min_side=min_side, topk=topk, alpha=0.5, beta=6.0, eps=1e-9)
    target_scores = jax.lax.stop_gradient(target_scores)
    normalizer = jnp.maximum(jnp.sum(target_scores), 1.0)

    # BCE with logits: (1 - t) x - log sigmoid(x).
    class_loss = jnp.sum((1 - target_scores) * class_logits - jax.nn.log_sigmoid(class_logits)) / normalizer

    weight = jnp.where(foreground, jnp.sum(target_scores, axis=-1), 0.0)  # (N, A)
    target_boxes = target_boxes / strides  # grid units
    iou = complete_iou(pred_boxes, target_boxes)
    box_loss = jnp.sum(jnp.where(foreground, (1.0 - iou) * weight, 0.0)) / normalizer

    limit = reg_max - 1 - 0.01
    target_distances = jnp.clip(jnp.concatenate([points - target_boxes[..., :2], target_boxes[..., 2:] - points],
                                                axis=-1), 0.0, limit)
    dfl_per_anchor = distribution_focal_loss(box_distributions, target_distances, reg_max)
    dfl_loss = jnp.sum(jnp.where(foreground, dfl_per_anchor * weight, 0.0)) / normalizer

    items = {"box_loss": box_loss * box, "class_loss": class_loss * cls, "dfl_loss": dfl_loss * dfl}
    items["total"] = (items["box_loss"] + items["class_loss"] + items["dfl_loss"]) * n
    return items
