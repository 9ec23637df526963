"""Box mAP as ultralytics 8.4's `DetectionValidator` reports it (mAP50, mAP50-95, P, R, fitness), in NumPy.

This is the metric YOLO training logs and picks its best checkpoint by (SPEC section 6). It is not the COCO API
(`evaluation.CocoDetectionEvaluator`): published numbers come from COCOeval, which is about 0.4 points higher on
COCO. Differences include: no maxDets=100 cap, no area ranges or crowd handling, a different greedy match (below),
all detections pooled per class across images, and mean P/R taken at the confidence that maximizes mean F1.

The pipeline, per image and then over the whole set:

1. `box_iou` (ground truth x predictions, float32 as `utils.metrics.box_iou`, eps 1e-7) and `match_predictions`
   (as `BaseValidator.match_predictions` without scipy): predictions are visited in decreasing confidence. At each
   of the ten IoU thresholds (float32 linspace(0.5, 0.95, 10)) a prediction takes the same-class ground truth with
   the highest IoU among those not yet claimed at that threshold, and is a true positive if that IoU reaches the
   threshold. This gives one (n_pred, 10) bool `tp` per image. An image without ground truth or without
   predictions gets all-False rows.
2. The stats (`tp`, `conf`, `pred_cls`, `target_cls`) are concatenated over images in order, then `ap_per_class`
   (as `utils.metrics.ap_per_class`) runs per class that has ground truth. It computes AP with `compute_ap`:
   the precision envelope is sampled at 101 recall points and integrated with the trapezoid rule. It also computes
   P and R at the confidence maximizing the smoothed mean F1 curve.
3. Means over the classes with ground truth (`Metric.mean_results`): precision, recall, map50, map (50-95).
   `fitness` is `Metric.fitness` of the installed 8.4.190: weights (0, 0, 0, 1) on (P, R, mAP50, mAP50-95), so
   fitness = mAP50-95. Older releases used 0.1 mAP50 + 0.9 mAP50-95 (`FITNESS_WEIGHTS` holds the weights).

Edge cases follow ultralytics. Predictions of classes that have no ground truth anywhere count for nothing.
Classes with ground truth but no predictions count with AP 0, P 0, R 0. With no ground truth at all, everything
is 0. An image with no predictions makes ultralytics' `conf` array float64 (its `np.zeros(0)` placeholder), which
changes nothing but how `np.argsort` breaks ties; this is reproduced.

    ap = BoxAP()
    for batch in eval_batches:
        dets = postprocess(...)          # Detections(boxes, scores, labels, num_valid)
        ap.add_batch(dets.boxes, dets.scores, dets.labels, dets.num_valid,
                     batch["boxes"], batch["labels"], batch["boxes_valid"], mask=batch["mask"])
    metrics = ap.result()                # {'precision', 'recall', 'map50', 'map', 'fitness'}

Multi-host: matching happens per image when the image is added, so `local_arrays()` holds one row per image, laid
out like `CocoDetectionEvaluator`'s rows (fields `BOX_AP_FIELDS`: dtype and the axis that may grow: D for `det_*`,
M for `gt_*`; padded rows have `mask` False, padded detections lie beyond `num_valid`, padded ground truths have
`gt_valid` False). Gather those rows from every process in process order, then call `compute(gathered)` on each
process. It is deterministic NumPy, so every process gets the same numbers.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "BoxAP", "BOX_AP_FIELDS", "IOU_THRESHOLDS", "FITNESS_WEIGHTS", "box_iou", "match_predictions", "image_stats",
    "compute_ap", "ap_per_class", "APResult", "mean_results", "concatenate_box_ap_rows",
]

# torch.linspace(0.5, 0.95, 10) as ultralytics' `iouv` (float32; equal to numpy's linspace cast to float32)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).astype(np.float32)
# `Metric.fitness` weights on (precision, recall, mAP50, mAP50-95) in ultralytics 8.4.190
FITNESS_WEIGHTS = (0.0, 0.0, 0.0, 1.0)
_NIOU = IOU_THRESHOLDS.shape[0]
_RECALL_POINTS = np.linspace(0, 1, 101)  # COCO's 101-point interpolation
_CONF_GRID = np.linspace(0, 1, 1000)  # confidence axis of the P / R / F1 curves
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed trapz


# ================================================================================================ per image
def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """(len(boxes1), len(boxes2)) IoU of xyxy boxes, in float32 with the same operation order as ultralytics'
    `box_iou`: inter / (area1 + area2 - inter + eps). This reproduces the exact float32 values that are compared
    against the thresholds."""
    a = np.asarray(boxes1, np.float32).reshape(-1, 4)[:, None, :]
    b = np.asarray(boxes2, np.float32).reshape(-1, 4)[None, :, :]
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    wh1, wh2 = a[..., 2:] - a[..., :2], b[..., 2:] - b[..., :2]
    area1, area2 = wh1[..., 0] * wh1[..., 1], wh2[..., 0] * wh2[..., 1]
    return inter / (area1 + area2 - inter + np.float32(eps))


def match_predictions(pred_classes: np.ndarray, true_classes: np.ndarray, iou: np.ndarray,
                      thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """(n_pred, n_thresholds) bool true-positive matrix (the greedy non-scipy path of ultralytics'
    `BaseValidator.match_predictions`). `iou` is (n_gt, n_pred), and predictions must be in decreasing
    confidence. Predictions are visited in that order, and only those overlapping some ground truth by at least the
    lowest threshold. At each threshold a prediction claims the still-unclaimed same-class ground truth with the
    highest IoU (the first one on ties) and is correct if that IoU reaches the threshold. Cross-class IoUs are
    zeroed, as ultralytics multiplies by the class-equality mask."""
    pred_classes = np.asarray(pred_classes).reshape(-1)
    true_classes = np.asarray(true_classes).reshape(-1)
    thresholds = np.asarray(thresholds)
    n_thr = thresholds.shape[0]
    correct = np.zeros((pred_classes.shape[0], n_thr), np.bool_)
    iou = np.asarray(iou) * (true_classes[:, None] == pred_classes[None, :])
    claimed = np.zeros((iou.shape[0], n_thr), np.bool_)  # ground truth taken, per threshold
    columns = np.arange(n_thr)
    for j in np.flatnonzero((iou >= thresholds.min()).any(axis=0)):
        free_iou = np.where(claimed, 0, iou[:, j, None])  # (n_gt, n_thr)
        best = free_iou.argmax(axis=0)
        hit = free_iou[best, columns] >= thresholds
        correct[j] = hit
        claimed[best, columns] |= hit
    return correct


def image_stats(pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes):
    """One image's (tp (K, 10) bool, conf (K,) float32, pred_cls (K,) int32), with predictions reordered by
    decreasing score (stable, so detections already in NMS order keep it), as `DetectionValidator._process_batch`
    sees them. All-False when the image has no ground truth or no predictions."""
    pred_scores = np.asarray(pred_scores, np.float32).reshape(-1)
    order = np.argsort(-pred_scores, kind="stable")
    conf = pred_scores[order]
    pred_cls = np.asarray(pred_classes).reshape(-1).astype(np.int32)[order]
    gt_classes = np.asarray(gt_classes).reshape(-1).astype(np.int32)
    if conf.shape[0] == 0 or gt_classes.shape[0] == 0:
        return np.zeros((conf.shape[0], _NIOU), np.bool_), conf, pred_cls
    boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 4)[order]
    iou = box_iou(np.asarray(gt_boxes, np.float32).reshape(-1, 4), boxes)
    return match_predictions(pred_cls, gt_classes, iou), conf, pred_cls


# ================================================================================================ whole set
def _smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Moving average of odd width round(2 * fraction * len)//2 + 1, edges padded with the end values (the F1
    curve smoothing ultralytics applies before picking the max-F1 confidence)."""
    width = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(width // 2)
    padded = np.concatenate((pad * y[0], y, pad * y[-1]), 0)
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one PR curve (ultralytics' `compute_ap`). Add sentinels (recall 0 and 1, precision 1 at the start and
    0 at the end, plus a point at the last recall), take the decreasing envelope of precision, and integrate it
    with the trapezoid rule over 101 recall points. Returns (ap, envelope, recall with sentinels)."""
    recall = np.asarray(recall)
    last = recall[-1] if len(recall) else 1.0
    rec = np.concatenate(([0.0], recall, [last], [1.0]))
    prec = np.concatenate(([1.0], precision, [0.0], [0.0]))
    envelope = np.flip(np.maximum.accumulate(np.flip(prec)))
    ap = _trapezoid(np.interp(_RECALL_POINTS, rec, envelope), _RECALL_POINTS)
    return ap, envelope, rec


class APResult(NamedTuple):
    """Per class with ground truth (sorted by class): precision / recall / F1 at the max-mean-F1 confidence, AP
    (nc, 10) over the IoU thresholds, the classes, and the ground-truth count of each."""
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    classes: np.ndarray
    num_targets: np.ndarray


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 eps: float = 1e-16) -> APResult:
    """Per-class AP and max-F1 P/R over pooled detections (ultralytics' `ap_per_class`, without the plots).
    Sort all detections by decreasing confidence (np.argsort, unstable, as ultralytics does). For each class with
    ground truth, build cumulative TP/FP curves, giving recall tpc / (n_gt + eps) and precision tpc / (tpc + fpc),
    and run `compute_ap` per IoU column. Interpolate P and R (IoU 0.5) on a 1000-point confidence grid. Pick the
    grid point where the smoothed mean F1 peaks. Classes without predictions keep zeros."""
    tp, conf, pred_cls = np.asarray(tp), np.asarray(conf), np.asarray(pred_cls)
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, num_targets = np.unique(np.asarray(target_cls), return_counts=True)
    nc = classes.shape[0]
    grid = _CONF_GRID
    ap = np.zeros((nc, tp.shape[1]))
    p_curve, r_curve = np.zeros((nc, grid.shape[0])), np.zeros((nc, grid.shape[0]))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        n_gt, n_pred = num_targets[ci], sel.sum()
        if n_pred == 0 or n_gt == 0:
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_gt + eps)
        precision = tpc / (tpc + fpc)
        # xp must increase for np.interp: use negated confidences (decreasing -> increasing)
        r_curve[ci] = np.interp(-grid, -conf[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-grid, -conf[sel], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])[0]
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = _smooth(f1_curve.mean(0), 0.1).argmax() if nc else 0
    return APResult(p_curve[:, best], r_curve[:, best], f1_curve[:, best], ap, classes.astype(int), num_targets)


def mean_results(result: APResult) -> dict[str, float]:
    """`Metric.mean_results` (mean over classes with ground truth; 0 when there are none) and `Metric.fitness`."""
    mp = result.p.mean() if len(result.p) else 0.0
    mr = result.r.mean() if len(result.r) else 0.0
    map50 = result.ap[:, 0].mean() if len(result.ap) else 0.0
    map_ = result.ap.mean() if len(result.ap) else 0.0
    fitness = (np.nan_to_num(np.array([mp, mr, map50, map_])) * np.array(FITNESS_WEIGHTS)).sum()
    return {"precision": float(mp), "recall": float(mr), "map50": float(map50), "map": float(map_),
            "fitness": float(fitness)}


# ================================================================================================ accumulator
# per field: dtype, the axis that may grow between batches/hosts (None: fixed), as evaluation._FIELDS.
# Rows are images. `det_*` fields grow along D (detections), `gt_*` along M (ground truths).
BOX_AP_FIELDS = {
    "det_tp": (np.bool_, 1), "det_scores": (np.float32, 1), "det_labels": (np.int32, 1),
    "num_valid": (np.int32, None),
    "gt_labels": (np.int32, 1), "gt_valid": (np.bool_, 1),
    "mask": (np.bool_, None),
}


def _empty_rows() -> dict[str, np.ndarray]:
    return {"det_tp": np.zeros((0, 0, _NIOU), np.bool_), "det_scores": np.zeros((0, 0), np.float32),
            "det_labels": np.zeros((0, 0), np.int32), "num_valid": np.zeros((0,), np.int32),
            "gt_labels": np.zeros((0, 0), np.int32), "gt_valid": np.zeros((0, 0), np.bool_),
            "mask": np.zeros((0,), np.bool_)}


def concatenate_box_ap_rows(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenates row dicts (per batch, per image or per host) in order, zero-padding the D and M axes to the
    largest, so padded detections lie beyond `num_valid` and padded ground truths have `gt_valid` False. With no
    parts, returns zero-row arrays."""
    parts = [p for p in parts if p]
    if not parts:
        return _empty_rows()
    out = {}
    for name, (dtype, axis) in BOX_AP_FIELDS.items():
        arrays = [np.asarray(p[name], dtype) for p in parts]
        if axis is not None:
            size = max(a.shape[axis] for a in arrays)
            widths = [[(0, 0)] * a.ndim for a in arrays]
            for a, w in zip(arrays, widths):
                w[axis] = (0, size - a.shape[axis])
            arrays = [np.pad(a, w) if w[axis][1] else a for a, w in zip(arrays, widths)]
        out[name] = np.concatenate(arrays, axis=0)
    return out


def _to_numpy(x) -> np.ndarray:
    """This host's rows: a batch-sharded global jax.Array goes through evaluation._host_local, anything else through
    np.asarray."""
    if type(x).__module__.startswith(("jax", "jaxlib")):
        from flax_mobilenet.training.evaluation import _host_local
        return _host_local(x)
    return np.asarray(x)


class BoxAP:
    """Accumulates ultralytics-style per-image stats and returns
    {'precision', 'recall', 'map50', 'map', 'fitness'} as `DetectionValidator` reports them (see the module doc).
    Classes are ints in any consistent numbering. Boxes are xyxy in one pixel space shared by detections and
    ground truth."""

    def __init__(self):
        self._parts: list[dict[str, np.ndarray]] = []

    def reset(self) -> None:
        self._parts = []

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "BoxAP":
        """An accumulator holding already-collected rows (e.g. gathered from every host); `result()` computes."""
        ap = cls()
        ap._parts = [{k: np.asarray(arrays[k], BOX_AP_FIELDS[k][0]) for k in BOX_AP_FIELDS}]
        return ap

    # ---------------------------------------------------------------------------------------------- accumulate
    def add_image(self, pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes) -> None:
        """One real image: detections (K, 4) xyxy, (K,), (K,), in any order (matched by decreasing score), and
        ground truth (G, 4) xyxy, (G,). Empty arrays are fine."""
        tp, conf, cls = image_stats(pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes)
        gt_classes = np.asarray(gt_classes).reshape(-1).astype(np.int32)
        self._parts.append({
            "det_tp": tp[None], "det_scores": conf[None], "det_labels": cls[None],
            "num_valid": np.array([conf.shape[0]], np.int32),
            "gt_labels": gt_classes[None], "gt_valid": np.ones((1, gt_classes.shape[0]), np.bool_),
            "mask": np.ones((1,), np.bool_),
        })

    def add_batch(self, det_boxes, det_scores, det_labels, det_valid=None, gt_boxes=None, gt_labels=None,
                  gt_valid=None, mask=None) -> None:
        """A padded batch of N images. Detections: boxes (N, D, 4) xyxy, scores (N, D), labels (N, D), and det_valid
        as (N, D) bools or (N,) counts (a `Detections.num_valid`: the first num_valid rows; None means all).
        Ground truth: boxes (N, M, 4) xyxy, labels (N, M), gt_valid (N, M) bools (None means all). mask (N,): real
        images (None means all); padding images are skipped entirely."""
        if gt_boxes is None or gt_labels is None:
            raise ValueError("add_batch needs gt_boxes and gt_labels")
        boxes = _to_numpy(det_boxes).astype(np.float32)
        n, d = boxes.shape[:2]
        scores = _to_numpy(det_scores).astype(np.float32).reshape(n, d)
        labels = _to_numpy(det_labels).reshape(n, d)
        if det_valid is None:
            det_ok = np.ones((n, d), np.bool_)
        else:
            det_valid = _to_numpy(det_valid)
            if det_valid.ndim == 1:  # num_valid counts
                det_ok = np.arange(d)[None, :] < det_valid.reshape(n, 1)
            else:
                det_ok = det_valid.reshape(n, d) > 0
        g_boxes = _to_numpy(gt_boxes).astype(np.float32)
        m = g_boxes.shape[1]
        g_labels = _to_numpy(gt_labels).reshape(n, m)
        g_ok = np.ones((n, m), np.bool_) if gt_valid is None else _to_numpy(gt_valid).reshape(n, m) > 0
        real = np.ones((n,), np.bool_) if mask is None else _to_numpy(mask).reshape(n) > 0
        rows = []
        for i in np.flatnonzero(real):
            tp, conf, cls = image_stats(boxes[i][det_ok[i]], scores[i][det_ok[i]], labels[i][det_ok[i]],
                                        g_boxes[i][g_ok[i]], g_labels[i][g_ok[i]])
            gl = g_labels[i][g_ok[i]].astype(np.int32)
            rows.append({"det_tp": tp[None], "det_scores": conf[None], "det_labels": cls[None],
                         "num_valid": np.array([conf.shape[0]], np.int32),
                         "gt_labels": gl[None], "gt_valid": np.ones((1, gl.shape[0]), np.bool_),
                         "mask": np.ones((1,), np.bool_)})
        if rows:
            self._parts.append(concatenate_box_ap_rows(rows))

    def local_arrays(self) -> dict[str, np.ndarray]:
        """This host's image rows so far, as fixed-size arrays (`BOX_AP_FIELDS`; zero rows if none). Gather them from
        all processes, in process order, and pass the result to `compute`."""
        arrays = concatenate_box_ap_rows(self._parts)
        self._parts = [arrays] if arrays["mask"].shape[0] else []
        return arrays

    # ------------------------------------------------------------------------------------------------ evaluate
    @staticmethod
    def stats(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The concatenated stats ultralytics passes to `ap_per_class`: tp, conf, pred_cls, target_cls, over the
        rows with mask True in row order. `conf` is float64 if any such image has no detections, as it is in
        ultralytics (see the module doc)."""
        keep = np.asarray(arrays["mask"], bool)
        num_valid = np.asarray(arrays["num_valid"])[keep]
        scores = np.asarray(arrays["det_scores"], np.float32)[keep]
        det_ok = np.arange(scores.shape[1])[None, :] < num_valid[:, None]
        conf = scores[det_ok]
        if (num_valid == 0).any():
            conf = conf.astype(np.float64)
        return {"tp": np.asarray(arrays["det_tp"], bool)[keep][det_ok],
                "conf": conf,
                "pred_cls": np.asarray(arrays["det_labels"])[keep][det_ok],
                "target_cls": np.asarray(arrays["gt_labels"])[keep][np.asarray(arrays["gt_valid"], bool)[keep]]}

    def compute(self, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        """{'precision', 'recall', 'map50', 'map', 'fitness'} of the whole (gathered) set. Deterministic, so it is
        the same on every process given the same arrays. Rows with mask False are ignored; with no real images,
        all values are 0."""
        s = self.stats(arrays)
        return mean_results(ap_per_class(s["tp"], s["conf"], s["pred_cls"], s["target_cls"]))

    def result(self) -> dict[str, float]:
        """`compute` over this process's rows (single process, or after `from_arrays` of gathered rows)."""
        return self.compute(self.local_arrays())
