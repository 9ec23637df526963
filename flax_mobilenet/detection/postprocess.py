"""SSD detections from raw head outputs, as torchvision's `SSD.postprocess_detections`, with static shapes.

Per image: softmax over classes; decode the boxes on the anchors (`BoxCoder((10, 10, 5, 5))`) and clip
them to the image; for every class but background 0, the scores > `score_threshold`, their top
`topk_candidates`; NMS per class (IoU > `nms_iou` suppresses, torchvision's `batched_nms` for this many
boxes); the `detections_per_img` best survivors by decreasing score. Outputs are padded to
`detections_per_img` rows, zeros beyond `num_valid`.

Memory: per-class NMS over topk candidates is (N, C - 1, T, T) bools, 8 MiB per image for COCO's 91
classes and T = 300.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .box_coder import decode
from .boxes import clip_boxes_to_image, resize_boxes
from .nms import DEFAULT_METHOD, NMSMethod, greedy_keep


class Detections(NamedTuple):
    boxes: jax.Array  # (N, D, 4) float32, xyxy pixels of the network input (see `rescale_detections`)
    scores: jax.Array  # (N, D) float32, decreasing
    labels: jax.Array  # (N, D) int32, 1..C-1 (0 in padding)
    num_valid: jax.Array  # (N,) int32


@functools.partial(jax.jit, static_argnames=("score_threshold", "nms_iou", "topk_candidates",
                                             "detections_per_img", "nms_method"))
def postprocess(bbox_regression: jax.Array, cls_logits: jax.Array, anchors: jax.Array, image_size,
                score_threshold: float = 0.001, nms_iou: float = 0.55, topk_candidates: int = 300,
                detections_per_img: int = 300,
                nms_method: NMSMethod = DEFAULT_METHOD) -> Detections:
    """bbox_regression (N, A, 4), cls_logits (N, A, C) (class 0 = background), anchors (A, 4) or
    (N, A, 4) xyxy pixels, image_size (h, w) or (N, 2): the size boxes are clipped to (the network input).
    Defaults are ssdlite320_mobilenet_v3_large's.  `nms_method`: a `greedy_keep` method or a function
    (`detection.nms.NMSMethod`; the ONNX export passes one that becomes ONNX's NonMaxSuppression)."""
    n, a, c = cls_logits.shape
    scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)
    anchors = jnp.broadcast_to(jnp.asarray(anchors, jnp.float32), (n, a, 4))
    boxes = clip_boxes_to_image(decode(bbox_regression.astype(jnp.float32), anchors), image_size)

    # Candidates per class: (N, C - 1, T), best first, ties in anchor order.
    t = min(int(topk_candidates), a)
    class_scores = jnp.swapaxes(scores[..., 1:], 1, 2)  # (N, C - 1, A)
    above = class_scores > np.float32(score_threshold)  # torch compares a float32 tensor in float32
    top_scores, top_idx = jax.lax.top_k(jnp.where(above, class_scores, -jnp.inf), t)
    cand_valid = top_scores > -jnp.inf
    cand_boxes = jnp.take_along_axis(boxes[:, None], top_idx[..., None], axis=2)  # (N, C - 1, T, 4)

    # NMS per class (candidates are already in visiting order).
    keep = greedy_keep(cand_boxes, cand_valid, nms_iou, nms_method)

    # The best `detections_per_img` kept candidates, ties by class then rank (a stable sort).
    flat_scores = jnp.where(keep, top_scores, -jnp.inf).reshape(n, -1)
    total = flat_scores.shape[1]
    d = int(detections_per_img)
    if total < d:
        flat_scores = jnp.pad(flat_scores, ((0, 0), (0, d - total)), constant_values=-jnp.inf)
    best_scores, best = jax.lax.top_k(flat_scores, d)
    valid = best_scores > -jnp.inf
    best_c = jnp.minimum(best, total - 1)
    out_boxes = jnp.take_along_axis(cand_boxes.reshape(n, -1, 4), best_c[..., None], axis=1)
    labels = (lax.div(best_c, jnp.int32(t)) + 1).astype(jnp.int32)  # not `//`: its ONNX form needs a fixed batch
    return Detections(
        boxes=jnp.where(valid[..., None], out_boxes, 0.0),
        scores=jnp.where(valid, best_scores, 0.0),
        labels=jnp.where(valid, labels, 0),
        num_valid=jnp.sum(valid, axis=-1, dtype=jnp.int32),
    )


def rescale_detections(detections: Detections, input_size, original_size) -> Detections:
    """Boxes from the network input's (h, w) to the original image's (h, w) (either may be (N, 2)), as
    torchvision's `GeneralizedRCNNTransform.postprocess` (`resize_boxes`). Padding rows stay zero."""
    boxes = resize_boxes(detections.boxes, input_size, original_size)
    return detections._replace(boxes=boxes)
