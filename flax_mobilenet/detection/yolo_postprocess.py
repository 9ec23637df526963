"""YOLO detections from raw head outputs, as ultralytics' and the `yolov5` package's `non_max_suppression`,
in pure JAX with static shapes (jit-able; one NMS call per batch, so the ONNX export can swap it).

Inputs are in OUR layout, anchors before channels:
  `yolo_postprocess`    anchor-free heads (YOLOv8/11, v5u, the hybrids' v8 head): (N, A, 4 + nc) = cx, cy, w, h in
                        input pixels, then the class scores (sigmoid) -- ultralytics' eval output (N, 4 + nc, A)
                        transposed.  Reference: `ultralytics.utils.nms.non_max_suppression` (8.4.190).
  `yolov5_postprocess`  anchor-based `yolov5` 7.0 heads: (N, A, 5 + nc) = cx, cy, w, h, objectness, class scores
                        (its eval output as it is).  Reference: `yolov5.utils.general.non_max_suppression`.

Per image, as the references:
  1. boxes xyxy = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) (float32, their arithmetic).
  2. scores: anchor-free, the class scores; anchor-based, objectness * class score (a float32 product), and only
     anchors with objectness > conf_threshold are candidates (yolov5's `xc`).
  3. candidates: multi_label (and nc > 1), every (anchor, class) pair scoring > conf_threshold, in (anchor, class)
     order; else each anchor's best class (first on ties) if it scores > conf_threshold.  `classes` keeps only
     those labels (after the best class is chosen, as the references).  Thresholds compare in float32, as torch
     compares a float32 tensor with a Python float.
  4. the top `max_candidates` (K) candidates by score (the references sort and cut at max_nms = 30000; K is
     capped at that too);
  5. class-aware greedy NMS the way the references do it: boxes offset by label * max_wh (7680; 0 when
     `agnostic`), one NMS over all, IoU > iou_threshold suppresses (`torchvision.ops.nms`'s rule, IoU in float32 on
     the offset boxes, compared with the threshold as a double; `detection.nms.greedy_keep`);
  6. the first `max_det` kept boxes, by decreasing score.

Output `Detections` (detection.postprocess's): boxes (N, max_det, 4) xyxy in input pixels (not offset), scores
(N, max_det) decreasing, labels (N, max_det) int32 and num_valid (N,); rows from num_valid on are zero.
NOTE: labels here are 0-based class indices 0..nc-1 (YOLO datasets have no background class), unlike SSD's
`postprocess`, whose labels start at 1; a zero label is only padding at or beyond num_valid.
Map the boxes to the original image with `preprocessing.scale_boxes_back` (a letterboxed input).

When the result equals the reference's (same boxes, scores, labels, order): greedy NMS in score order decides
each box from the boxes before it only, so NMS over the top K candidates keeps exactly the reference's kept
boxes that rank within the top K.  Hence the detections are the reference's whenever
  - the image has at most K candidates (scores > conf_threshold), or
  - at least max_det boxes survive NMS within the top K (num_valid == max_det);
otherwise (num_valid < max_det and more than K candidates) they are the reference's first num_valid detections
and the reference may have more (kept candidates ranked below K).
Exactly tied scores are visited in (anchor, class) index order here; torch's sort does not specify an order
among ties, so with exact ties the references may pick differently.  Not reproduced: the references' wall-clock
time limit (ultralytics stops after 2 + 0.05 * N s, yolov5 after 0.5 + 0.05 * N s), ultralytics' end-to-end
(v10/26) and rotated branches, yolov5's autolabelling `labels` and merge-NMS (off by default).

Cost: the NMS is O(K^2) per image in time and memory ((N, K, K) bools; K = 3000 is 9 MB per image).  The
default K = 3000 is above what a trained model's predict settings (conf 0.25) typically produce and usually
enough for val (conf 0.001), whose max_det = 300 survivors come from the best few thousand candidates.
XLA:CPU, 2 images of 8400 anchors x 80 classes, K = 3000: ~45 ms (predict) / ~60 ms (val) with 'greedy', the
default there ('blockwise', GPU/TPU's default, up to ~2x; 'fixed_point' ~3x); benchmarks/postprocess.py times them.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .nms import DEFAULT_METHOD, NMSMethod, greedy_keep
from .postprocess import Detections

MAX_WH = 7680  # the references' class offset (pixels): boxes must be smaller than this for class-aware NMS
MAX_NMS = 30000  # the references' cap on candidates entering NMS
DEFAULT_MAX_CANDIDATES = 3000

# Settings of the references' predictors and validators, to pass as `**YOLO_PRESETS["val"]`.
YOLO_PRESETS = {  # ultralytics 8.4: cfg/default.yaml iou 0.7, max_det 300; predict conf 0.25 (one label per box),
    # val conf 0.001 with multi_label=True (DetectionValidator.postprocess)
    "predict": dict(conf_threshold=0.25, iou_threshold=0.7, multi_label=False, max_det=300),
    "val": dict(conf_threshold=0.001, iou_threshold=0.7, multi_label=True, max_det=300),
}
YOLOV5_PRESETS = {  # yolov5 7.0: detect.py conf 0.25, iou 0.45, max_det 1000; val.py 0.001, 0.6, 300, multi-label
    "predict": dict(conf_threshold=0.25, iou_threshold=0.45, multi_label=False, max_det=1000),
    "val": dict(conf_threshold=0.001, iou_threshold=0.6, multi_label=True, max_det=300),
}

def xywh_to_xyxy(boxes: jax.Array) -> jax.Array:
    """(..., 4) cx, cy, w, h -> x1, y1, x2, y2 with the references' float operations (centre -/+ size / 2)."""
    centre, half = boxes[..., :2], boxes[..., 2:4] / 2
    return jnp.concatenate([centre - half, centre + half], axis=-1)


@functools.partial(jax.jit, static_argnames=("conf_threshold", "iou_threshold", "multi_label", "max_det", "agnostic",
                                             "max_candidates", "classes", "max_wh", "nms_method"))
def _yolo_nms(boxes_xywh: jax.Array, class_scores: jax.Array, objectness: Optional[jax.Array], *,
              conf_threshold: float, iou_threshold: float, multi_label: bool, max_det: int, agnostic: bool,
              max_candidates: int, classes: Optional[tuple[int, ...]], max_wh: float,
              nms_method: NMSMethod) -> Detections:
    n, a, nc = class_scores.shape
    conf = np.float32(conf_threshold)
    boxes = xywh_to_xyxy(boxes_xywh.astype(jnp.float32))
    scores = class_scores.astype(jnp.float32)
    if objectness is not None:  # yolov5: conf = obj * cls, candidates need obj > conf_threshold
        objectness = objectness.astype(jnp.float32)
        scores = scores * objectness[..., None]
        anchor_ok = objectness > conf
    else:
        anchor_ok = None

    if multi_label and nc > 1:  # every (anchor, class) pair, flattened in (anchor, class) order
        ok = scores > conf
        if anchor_ok is not None:
            ok = ok & anchor_ok[..., None]
        flat_scores = scores.reshape(n, a * nc)
        flat_ok = ok.reshape(n, a * nc)
        pair_labels = jnp.broadcast_to(jnp.arange(nc, dtype=jnp.int32), (n, a, nc)).reshape(n, a * nc)
        per_class = nc
    else:  # each anchor's best class
        flat_scores = jnp.max(scores, axis=-1)
        pair_labels = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        flat_ok = flat_scores > conf
        if anchor_ok is not None:
            flat_ok = flat_ok & anchor_ok
        per_class = 1
    if classes is not None:
        flat_ok = flat_ok & jnp.isin(pair_labels, jnp.asarray(classes, jnp.int32))

    # The top K candidates: the references' visiting order (decreasing score), cut at K.
    total = flat_scores.shape[1]
    k = max(1, min(int(max_candidates), MAX_NMS, total))
    top_scores, top_idx = lax.top_k(jnp.where(flat_ok, flat_scores, -jnp.inf), k)
    cand_valid = top_scores > -jnp.inf
    cand_labels = jnp.take_along_axis(pair_labels, top_idx, axis=1)
    anchor_idx = lax.div(top_idx, jnp.int32(per_class)) if per_class > 1 else top_idx  # lax.div: ONNX-friendly
    cand_boxes = jnp.take_along_axis(boxes, anchor_idx[..., None], axis=1)  # (N, K, 4)

    # Class-aware NMS as the references: one NMS over boxes shifted by label * max_wh.
    if agnostic:
        nms_boxes = cand_boxes
    else:
        nms_boxes = cand_boxes + (cand_labels.astype(jnp.float32) * np.float32(max_wh))[..., None]
    keep = greedy_keep(nms_boxes, cand_valid, iou_threshold, nms_method)

    # The first max_det kept, in visiting order (top_k keeps equal scores in position order).
    kept_scores = jnp.where(keep & cand_valid, top_scores, -jnp.inf)
    d = int(max_det)
    if k < d:
        kept_scores = jnp.pad(kept_scores, ((0, 0), (0, d - k)), constant_values=-jnp.inf)
    best_scores, best = lax.top_k(kept_scores, d)
    valid = best_scores > -jnp.inf
    best = jnp.minimum(best, k - 1)
    out_boxes = jnp.take_along_axis(cand_boxes, best[..., None], axis=1)
    out_labels = jnp.take_along_axis(cand_labels, best, axis=1)
    return Detections(
        boxes=jnp.where(valid[..., None], out_boxes, 0.0),
        scores=jnp.where(valid, best_scores, 0.0),
        labels=jnp.where(valid, out_labels, 0).astype(jnp.int32),
        num_valid=jnp.sum(valid, axis=-1, dtype=jnp.int32),
    )


def _check(predictions, conf_threshold, iou_threshold, max_det, max_candidates, min_channels, num_classes):
    if predictions.ndim != 3:
        raise ValueError(f"predictions must be (N, anchors, channels), got shape {predictions.shape}")
    if not (0 <= conf_threshold <= 1 and 0 <= iou_threshold <= 1):
        raise ValueError(f"conf_threshold and iou_threshold must lie in [0, 1], got {conf_threshold}, {iou_threshold}")
    if max_det < 1 or max_candidates < 1:
        raise ValueError(f"max_det and max_candidates must be at least 1, got {max_det}, {max_candidates}")
    available = predictions.shape[-1] - min_channels
    nc = available if num_classes is None else int(num_classes)
    if not 1 <= nc <= available:
        raise ValueError(f"predictions with {predictions.shape[-1]} channels hold {available} class scores "
                         f"after the first {min_channels}, asked for num_classes={num_classes}")
    return nc


def yolo_postprocess(predictions: jax.Array, conf_threshold: float = 0.25, iou_threshold: float = 0.7,
                     multi_label: bool = False, max_det: int = 300, agnostic: bool = False,
                     max_candidates: int = DEFAULT_MAX_CANDIDATES, classes: Optional[Sequence[int]] = None,
                     num_classes: Optional[int] = None, max_wh: float = MAX_WH,
                     nms_method: NMSMethod = DEFAULT_METHOD) -> Detections:
    """Anchor-free YOLO predictions (N, A, 4 + nc) (cx, cy, w, h, class scores; ultralytics' eval output
    transposed) -> `Detections` with 0-based labels, as `ultralytics.utils.nms.non_max_suppression`.

    Defaults are ultralytics' predictor's (`YOLO_PRESETS['predict']`); its validator's are `YOLO_PRESETS['val']`.
    `max_candidates`: K, the candidates (scores > conf_threshold) entering the O(K^2) NMS, the best first (the module
    docstring says when the result is the reference's).  `classes`: keep only these labels.  `num_classes`: channels
    after 4 + num_classes (mask coefficients, ...) are ignored (default: none are extra).  `nms_method`: a
    `detection.nms` method ('auto': by backend; 'greedy', 'fixed_point', 'blockwise': the same keep set) or a
    callable (boxes (N, K, 4), valid (N, K), iou_threshold) -> keep mask (N, K) of greedy NMS visiting the boxes in
    index order (the ONNX export's `nms_keep`).
    Compiled with jax.jit (the options are static); usable inside a jitted function too.
    """
    nc = _check(predictions, conf_threshold, iou_threshold, max_det, max_candidates, 4, num_classes)
    return _yolo_nms(predictions[..., :4], predictions[..., 4:4 + nc], None, conf_threshold=float(conf_threshold),
                     iou_threshold=float(iou_threshold), multi_label=bool(multi_label), max_det=int(max_det),
                     agnostic=bool(agnostic), max_candidates=int(max_candidates),
                     classes=None if classes is None else tuple(int(c) for c in classes), max_wh=float(max_wh),
                     nms_method=nms_method)


def yolov5_postprocess(predictions: jax.Array, conf_threshold: float = 0.25, iou_threshold: float = 0.45,
                       multi_label: bool = False, max_det: int = 1000, agnostic: bool = False,
                       max_candidates: int = DEFAULT_MAX_CANDIDATES, classes: Optional[Sequence[int]] = None,
                       num_classes: Optional[int] = None, max_wh: float = MAX_WH,
                       nms_method: NMSMethod = DEFAULT_METHOD) -> Detections:
    """Anchor-based yolov5 predictions (N, A, 5 + nc) (cx, cy, w, h, objectness, class scores) -> `Detections` with
    0-based labels, as the `yolov5` 7.0 package's `utils.general.non_max_suppression`: score = objectness * class
    score, candidates need objectness > conf_threshold too.

    Defaults are yolov5's detect.py (`YOLOV5_PRESETS['predict']`: conf 0.25, IoU 0.45, max_det 1000); val.py's are
    `YOLOV5_PRESETS['val']` (0.001, 0.6, multi-label, 300).  Other options as `yolo_postprocess`.
    """
    nc = _check(predictions, conf_threshold, iou_threshold, max_det, max_candidates, 5, num_classes)
    return _yolo_nms(predictions[..., :4], predictions[..., 5:5 + nc], predictions[..., 4],
                     conf_threshold=float(conf_threshold), iou_threshold=float(iou_threshold),
                     multi_label=bool(multi_label), max_det=int(max_det), agnostic=bool(agnostic),
                     max_candidates=int(max_candidates),
                     classes=None if classes is None else tuple(int(c) for c in classes), max_wh=float(max_wh),
                     nms_method=nms_method)
