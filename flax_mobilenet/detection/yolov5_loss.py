"""YOLOv5's training loss (the `yolov5` 7.0 package's `utils/loss.py` `ComputeLoss`) in pure JAX: static shapes,
jit-able, float32, the reference's values and gradients.

Per level, every ground-truth box goes to each anchor whose width and height ratios to it lie within
`anchor_t` (max(r, 1 / r) < anchor_t), in its own cell and in the (up to) two neighbouring cells whose shared edge
its centre is nearer than half a cell (never outside the grid).  Each such candidate is one
row of the reference's variable-length target list; here they are a fixed (N, M, anchors, 5 offsets) tensor with
a mask, so padded boxes and unmatched anchors drop out.  Per candidate: box loss 1 - CIoU of the decoded
prediction (xy = 2 sigmoid - 0.5 in the cell, wh = (2 sigmoid)^2 * anchor, grid units) against the box; class
BCE against one-hot targets (only when there are several classes); the objectness target of its cell is the
detached CIoU clamped at 0 (gr = 1), all other cells 0.  Means per level (over candidates, candidate x class,
cells), objectness weighted by `balance`; the sums times the gains; the total is their sum times the batch size.

When several candidates land on one (image, anchor, cell), the reference's `tobj[b, a, gj, gi] = iou` keeps the
last one written (PyTorch's CPU index_put without accumulate, sequential at these sizes).  Its list is ordered
offset (own cell, then left, up, right, down), anchor, image, box: within a cell of one image and anchor the
last is the candidate with the largest (offset, box index).  That one is chosen here explicitly (a scatter-max
of its rank), so the result is deterministic and the same as the reference's.

Boxes come in input pixels; grid coordinates are pixels times cells / side (1 / stride), where the reference
multiplies labels normalised in float32: equal to an ulp, bit for bit for centres on half pixels (so cell-edge
decisions agree).  A centre outside the image falls in the clamped edge cell, the target xy measured from it, as
in the reference.  Not ported (off in hyp.scratch-low): focal loss (fl_gamma), gr < 1, autobalance.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# hyp.scratch-low.yaml's loss settings, before train.py's rescaling (`yolov5_gains`).
YOLOV5_HYP: Mapping[str, Any] = {
    "box": 0.05, "cls": 0.5, "obj": 1.0, "anchor_t": 4.0, "cls_pw": 1.0, "obj_pw": 1.0, "label_smoothing": 0.0,
    "balance": None,  # None: ComputeLoss's per-level objectness weights for the model's level count
}

_OFFSET_BIAS = 0.5  # build_targets' g: a centre this close to a cell edge also claims the cell across it
# Candidate order of the reference: own cell, then the cells left (j), above (k), right (l), below (m); as a
# shift subtracted from the centre before truncating to a cell index.
_OFFSETS = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], np.float32) * _OFFSET_BIAS


def yolov5_hyperparameters(**options: Any) -> dict[str, Any]:
    """YOLOV5_HYP with `options` overriding it; a TypeError names unknown ones."""
    unknown = sorted(set(options) - set(YOLOV5_HYP))
    if unknown:
        raise TypeError(f"unknown YOLOv5 loss option(s) {', '.join(unknown)}; known: {', '.join(YOLOV5_HYP)}")
    return {**YOLOV5_HYP, **options}


def default_balance(num_levels: int) -> tuple[float, ...]:
    """ComputeLoss's objectness weights per level: [4, 1, 0.4] for 3 levels, else the P3-P7 row."""
    return (4.0, 1.0, 0.4) if num_levels == 3 else (4.0, 1.0, 0.25, 0.06, 0.02)[:num_levels]


def yolov5_gains(hyp: Mapping[str, Any], num_levels: int, num_classes: int, image_size: int) -> tuple[float, ...]:
    """train.py's rescaling of the hyp gains (box, cls, obj): to the level count, the class count and the
    training image side (`--imgsz`), so that the scratch values keep their balance away from 3 levels, 80 classes
    and 640 pixels."""
    layers = 3 / num_levels
    return (hyp["box"] * layers, hyp["cls"] * num_classes / 80 * layers,
            hyp["obj"] * (image_size / 640) ** 2 * layers)


def bce_with_logits(logits: jax.Array, targets: jax.Array, pos_weight: float = 1.0) -> jax.Array:
    """torch's BCEWithLogitsLoss elementwise term: (1 - t) x - (1 + (pw - 1) t) log sigmoid(x)."""
    log_weight = 1.0 + (pos_weight - 1.0) * targets
    return (1.0 - targets) * logits - log_weight * jax.nn.log_sigmoid(logits)


def complete_iou(box1: jax.Array, box2: jax.Array, eps: float = 1e-7) -> jax.Array:
    """yolov5's `bbox_iou(box1, box2, xywh=True, CIoU=True)` elementwise over (..., 4) cx, cy, w, h boxes (box1
    predicted, box2 target): IoU - centre distance^2 / enclosing diagonal^2 - alpha v, with alpha (the aspect
    term's weight) held constant for the gradient as the reference computes it under no_grad.  Not
    `yolo_loss.complete_iou` (ultralytics 8.4's): that one adds eps to the heights and to alpha's denominator in
    other places, and each port keeps its reference's arithmetic to the last bit."""
    x1, y1, w1, h1 = (box1[..., k] for k in range(4))
    x2, y2, w2, h2 = (box2[..., k] for k in range(4))
    hw1, hh1, hw2, hh2 = w1 / 2, h1 / 2, w2 / 2, h2 / 2
    b1x1, b1x2, b1y1, b1y2 = x1 - hw1, x1 + hw1, y1 - hh1, y1 + hh1
    b2x1, b2x2, b2y1, b2y2 = x2 - hw2, x2 + hw2, y2 - hh2, y2 + hh2
    inter = (jnp.maximum(jnp.minimum(b1x2, b2x2) - jnp.maximum(b1x1, b2x1), 0)
             * jnp.maximum(jnp.minimum(b1y2, b2y2) - jnp.maximum(b1y1, b2y1), 0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = jnp.maximum(b1x2, b2x2) - jnp.minimum(b1x1, b2x1)
    ch = jnp.maximum(b1y2, b2y2) - jnp.minimum(b1y1, b2y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (jnp.arctan(w2 / h2) - jnp.arctan(w1 / h1)) ** 2
    alpha = jax.lax.stop_gradient(v / (v - iou + (1 + eps)))
    return iou - (rho2 / c2 + v * alpha)


def _level_loss(p: jax.Array, centre: jax.Array, size: jax.Array, image_size: Sequence[int], classes: jax.Array,
                box_mask: jax.Array, anchors: jax.Array, hyp: Mapping[str, Any]) -> tuple[jax.Array, ...]:
    """One level: p (N, anchors, ny, nx, 5 + nc) raw outputs; centre, size (N, M, 2) input pixels (x, y) / (w, h);
    classes (N, M) 0-based; anchors (anchors, 2) grid units -> (box, objectness, class) loss of the level before
    the gains (the objectness one before `balance`)."""
    n, na, ny, nx, no = p.shape
    nc, m = no - 5, centre.shape[1]
    height, width = image_size
    grid = jnp.asarray([nx, ny], jnp.float32)
    # Grid units: the reference's normalised box times the grid size, as one factor (1 / stride, a power of two
    # when the side is a multiple of the stride: exact, where dividing by the side first would round).
    scale = jnp.asarray([nx / width, ny / height], jnp.float32)
    gxy, gwh = centre * scale, size * scale  # (N, M, 2)

    # Anchor match on the wh ratios: (N, M, anchors).
    ratio = gwh[:, :, None, :] / anchors
    matched = jnp.max(jnp.maximum(ratio, 1 / ratio), axis=-1) < hyp["anchor_t"]
    matched = matched & box_mask[:, :, None]

    # Neighbour cells: left/up when the centre is in the first half of its cell (and past the first cell),
    # right/down when in the second half (and before the last).
    inverse = grid - gxy
    near_low = (jnp.remainder(gxy, 1.0) < _OFFSET_BIAS) & (gxy > 1)
    near_high = (jnp.remainder(inverse, 1.0) < _OFFSET_BIAS) & (inverse > 1)
    offset_on = jnp.stack([jnp.ones_like(near_low[..., 0]), near_low[..., 0], near_low[..., 1],
                           near_high[..., 0], near_high[..., 1]], axis=-1)  # (N, M, 5)
    valid = matched[..., None] & offset_on[:, :, None, :]  # (N, M, anchors, 5)

    # Cells: truncation (the reference's .long()), clamped into the grid; the target xy is relative to the
    # clamped cell, as in the reference (its in-place clamp changes the cell it subtracts).
    shifted = gxy[:, :, None, :] - jnp.asarray(_OFFSETS)  # (N, M, 5, 2)
    cell = jnp.clip(jnp.trunc(shifted).astype(jnp.int32), 0, jnp.asarray([nx - 1, ny - 1], jnp.int32))
    gi, gj = cell[..., 0], cell[..., 1]  # (N, M, 5)
    target_xy = gxy[:, :, None, :] - cell.astype(jnp.float32)  # (N, M, 5, 2)

    image = jnp.arange(n)[:, None, None, None]
    anchor = jnp.arange(na)[None, None, :, None]
    picked = p[image, anchor, gj[:, :, None, :], gi[:, :, None, :]]  # (N, M, anchors, 5, no)

    # Box: masked-out candidates get a harmless target (finite CIoU and gradient), then drop out of the sums.
    target_wh = jnp.where(valid[..., None], gwh[:, :, None, None, :], 1.0)
    target = jnp.concatenate([jnp.broadcast_to(target_xy[:, :, None], target_wh.shape), target_wh], axis=-1)
    pxy = jax.nn.sigmoid(picked[..., :2]) * 2 - 0.5
    pwh = (jax.nn.sigmoid(picked[..., 2:4]) * 2) ** 2 * anchors[:, None, :]
    iou = complete_iou(jnp.concatenate([pxy, pwh], axis=-1), target)  # (N, M, anchors, 5)
    count = jnp.sum(valid)
    box_loss = jnp.sum(jnp.where(valid, 1.0 - iou, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)

    # Objectness target: the last-written candidate of each (image, anchor, cell), ranked (offset, box).
    cells = ((image * na + anchor) * ny + gj[:, :, None, :]) * nx + gi[:, :, None, :]  # (N, M, anchors, 5)
    rank = jnp.arange(5)[None, None, None, :] * m + jnp.arange(m)[None, :, None, None]
    rank = jnp.where(valid, rank, -1).ravel()
    cells = jnp.broadcast_to(cells, valid.shape).ravel()
    last = jnp.full((n * na * ny * nx,), -1, rank.dtype).at[cells].max(rank)
    winner = valid.ravel() & (rank == last[cells])
    objectness = jax.lax.stop_gradient(jnp.maximum(iou, 0.0)).ravel()
    tobj = jnp.zeros((n * na * ny * nx,), jnp.float32).at[cells].add(jnp.where(winner, objectness, 0.0))
    obj_loss = jnp.mean(bce_with_logits(p[..., 4].reshape(-1), tobj, hyp["obj_pw"]))

    if nc > 1:
        positive, negative = 1.0 - 0.5 * hyp["label_smoothing"], 0.5 * hyp["label_smoothing"]
        one_hot = jax.nn.one_hot(classes, nc, dtype=jnp.bool_)[:, :, None, None, :]
        targets = jnp.where(one_hot, positive, negative)
        per_candidate = jnp.sum(bce_with_logits(picked[..., 5:], targets, hyp["cls_pw"]), axis=-1)
        cls_loss = (jnp.sum(jnp.where(valid, per_candidate, 0.0))
                    / jnp.maximum(count * nc, 1).astype(jnp.float32))
    else:
        cls_loss = jnp.zeros((), jnp.float32)
    return box_loss, obj_loss, cls_loss


def yolov5_loss(logits: jax.Array, boxes: jax.Array, labels: jax.Array, box_mask: jax.Array,
                image_size: Sequence[int], strides: Sequence[int], anchors: Any, gains: Sequence[float],
                hyp: Mapping[str, Any]) -> dict[str, jax.Array]:
    """logits (N, A, 5 + nc) the head's raw outputs in yolov5's order (level, anchor, y, x); boxes (N, M, 4) xyxy
    input pixels; labels (N, M) 1-based classes (0 = padding); box_mask (N, M) bool; image_size (height,
    width); anchors (levels, anchors, 2) grid units; gains (box, cls, obj) after train.py's rescaling; hyp
    for anchor_t, cls_pw, obj_pw, label_smoothing, balance -> {'total', 'box_loss', 'object_loss',
    'class_loss'} as ComputeLoss returns them (total = sum of the three times the batch size)."""
    logits = logits.astype(jnp.float32)
    boxes = boxes.astype(jnp.float32)
    n, _, no = logits.shape
    height, width = image_size
    anchors = jnp.asarray(anchors, jnp.float32)
    na = anchors.shape[1]
    levels = len(strides)
    balance = hyp["balance"] if hyp["balance"] is not None else default_balance(levels)
    if len(balance) != levels:
        raise ValueError(f"YOLOv5 loss: balance needs one weight per level ({levels}), got {balance}")
    sizes = [(-(-height // s), -(-width // s)) for s in strides]  # stride-2 convs with padding k // 2: ceil
    expected = sum(na * ny * nx for ny, nx in sizes)
    if logits.shape[1] != expected:
        raise ValueError(f"YOLOv5 loss: {logits.shape[1]} predictions, but {height}x{width} inputs with strides "
                         f"{tuple(strides)} and {na} anchors give {expected}")

    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # input pixels
    extent = boxes[..., 2:] - boxes[..., :2]
    box_mask = box_mask.astype(bool)
    classes = jnp.clip(labels.astype(jnp.int32) - 1, 0, no - 6)

    lbox = lobj = lcls = jnp.zeros((), jnp.float32)
    start = 0
    for i, (ny, nx) in enumerate(sizes):
        count = na * ny * nx
        p = logits[:, start:start + count].reshape(n, na, ny, nx, no)
        start += count
        box_i, obj_i, cls_i = _level_loss(p, centre, extent, (height, width), classes, box_mask, anchors[i],
                                          hyp)
        lbox, lobj, lcls = lbox + box_i, lobj + obj_i * balance[i], lcls + cls_i
    box_gain, cls_gain, obj_gain = gains
    lbox, lobj, lcls = lbox * box_gain, lobj * obj_gain, lcls * cls_gain
    return {"total": (lbox + lobj + lcls) * n, "box_loss": lbox, "object_loss": lobj, "class_loss": lcls}
