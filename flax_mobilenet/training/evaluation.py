"""Evaluation over a whole eval set: COCO box mAP (pycocotools) for detection, confusion-matrix mIoU for segmentation.

Eval batches are padded to a fixed size; a per-example `mask` (1 real, 0 padding) says which rows count. Both
evaluators accumulate every real example of a (possibly multi-host) eval set:

Segmentation (`confusion_update`, `confusion_matrix`, `ConfusionMatrix`, `segmentation_metrics`): as torchvision's
references/segmentation/utils.py `ConfusionMatrix`: an (n, n) matrix indexed [target, prediction], built with a
bincount of `n * target + pred` over the pixels whose target lies in [0, n) (torchvision's only filter: 255 and any
other out-of-range label are ignored), here also dropping `ignore_index` and the pixels of padding examples. Across
hosts the matrix is *summed*: inside a jit over a globally sharded batch (the trainer's data-parallel eval step) the
result is already the global sum; host-local matrices are summed with `reduce_confusion_matrix`
(`multihost_utils.process_allgather(...).sum(0)`).

Detection (`CocoDetectionEvaluator`): COCO box AP computed by pycocotools' `COCOeval(iouType='bbox')` with its default
parameters (IoU .50:.05:.95, 101-point interpolated precision, maxDets 1/10/100, area ranges small/medium/large), as
torchvision's references/detection `CocoEvaluator`. Each host keeps its own rows as fixed-size arrays; `evaluate()` pads them to a
common shape, gathers them to every process with `multihost_utils.process_allgather`, runs COCOeval on process 0
only and broadcasts the numbers to all processes (so every host logs / checkpoints the same metrics).

Category ids are passed through unchanged: our labels are the COCO `category_id`s. For synthetic data they are
the contiguous 1..C-1 (0 is background and never a detection); for COCO, torchvision's detection labels already are
COCO's category ids (1..90 with gaps, 91-way heads with background 0), as its references' `ConvertCocoPolysToMask`
keeps `category_id` as the label, so they match a COCO annotation file as they are.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "confusion_matrix", "confusion_update", "ConfusionMatrix", "segmentation_metrics", "reduce_confusion_matrix",
    "CocoDetectionEvaluator", "COCO_STAT_NAMES",
]


# ================================================================================================ segmentation
def confusion_matrix(logits_or_preds: jax.Array, targets: jax.Array, num_classes: int,
                     ignore_index: Optional[int] = 255, mask: Optional[jax.Array] = None) -> jax.Array:
    """One batch's (num_classes, num_classes) int32 confusion matrix, rows = target class, columns = predicted class.

    `logits_or_preds`: logits with the class axis last, (N, H, W, C) (argmax taken here; Flax is channels-last), or
    integer predictions of `targets`' shape. `targets` (N, H, W) ints. Counted pixels: 0 <= target < num_classes
    (torchvision's rule, so 255 is ignored whatever `ignore_index`), target != `ignore_index`, 0 <= pred <
    num_classes, and `mask` true: `mask` is (N,) per example (the batch's padding mask) or of `targets`' shape.
    Jit-able with `num_classes` and `ignore_index` static. int32: fine for a batch (< 2**31 pixels); accumulate
    many batches in int64 on the host (`ConfusionMatrix`) when a cell may pass 2**31."""
    n = int(num_classes)
    targets = jnp.asarray(targets)
    preds = jnp.asarray(logits_or_preds)
    if preds.ndim == targets.ndim + 1:
        preds = jnp.argmax(preds, axis=-1)
    if preds.shape != targets.shape:
        raise ValueError(f"predictions {preds.shape} do not match targets {targets.shape} (logits need the class "
                         "axis last, at the targets' resolution)")
    targets = targets.astype(jnp.int32)
    preds = preds.astype(jnp.int32)
    valid = (targets >= 0) & (targets < n) & (preds >= 0) & (preds < n)
    if ignore_index is not None:
        valid &= targets != ignore_index
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != targets.shape:
            mask = mask.reshape(mask.shape + (1,) * (targets.ndim - mask.ndim))
        valid &= mask > 0
    index = jnp.where(valid, n * targets + preds, 0).reshape(-1)
    counts = jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32), length=n * n)
    return counts.astype(jnp.int32).reshape(n, n)


def confusion_update(cm: jax.Array, logits_or_preds: jax.Array, targets: jax.Array, num_classes: int,
                     ignore_index: Optional[int] = 255, mask: Optional[jax.Array] = None) -> jax.Array:
    """`cm` + this batch's `confusion_matrix` (same arguments), in `cm`'s dtype. Jit-able (`num_classes`,
    `ignore_index` static); start from `jnp.zeros((num_classes, num_classes), jnp.int32)`."""
    batch = confusion_matrix(logits_or_preds, targets, num_classes, ignore_index, mask)
    return cm + batch.astype(jnp.asarray(cm).dtype)


def segmentation_metrics(cm) -> dict[str, Any]:
    """torchvision's `ConfusionMatrix.compute` from an (n, n) [target, pred] matrix (float64 here, float32 there):

    pixel_accuracy = trace / total; per_class_accuracy = diag / row sums (recall); per_class_iou = diag /
    (row sum + column sum - diag). 'mIoU' is torchvision's reported mean IoU, the plain `iu.mean()` over all n
    classes: a class with no pixel in either targets or predictions has IoU 0/0 = NaN, and then mIoU is NaN too
    (a class that is only predicted has IoU 0 and counts). 'mIoU_present' is the NaN-ignoring mean over the classes
    that occur (the usual convention elsewhere; equal to 'mIoU' whenever every class occurs, as on a full VOC/COCO
    val set). Lists hold Python floats, NaN for undefined entries."""
    h = np.asarray(cm, dtype=np.float64)
    diag = np.diag(h)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc_global = diag.sum() / h.sum()
        acc = diag / h.sum(1)
        iu = diag / (h.sum(1) + h.sum(0) - diag)
        present = iu[~np.isnan(iu)]
    return {
        "mIoU": float(iu.mean()),
        "mIoU_present": float(present.mean()) if present.size else float("nan"),
        "pixel_accuracy": float(acc_global),
        "per_class_iou": [float(v) for v in iu],
        "per_class_accuracy": [float(v) for v in acc],
    }


def reduce_confusion_matrix(cm) -> np.ndarray:
    """The all-host sum of a confusion matrix, as int64 numpy on every process.

    A host-local matrix (numpy, or a fully addressable jax.Array) is summed over processes
    (`process_allgather` stacks one per process). A global jax.Array that is not fully addressable is the output
    of a jit over globally sharded batches, already summed over all hosts: it is only fetched."""
    if isinstance(cm, jax.Array) and not cm.is_fully_addressable:
        if not cm.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(cm), dtype=np.int64)
        return np.asarray(cm.addressable_data(0), dtype=np.int64)
    local = np.asarray(cm, dtype=np.int64)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(local), dtype=np.int64).sum(axis=0)


class ConfusionMatrix:
    """Accumulates a host's confusion matrix over eval batches (per-batch counts jitted, running sum int64 on the
    host); `compute()` reduces over hosts and returns `segmentation_metrics`.

        cm = ConfusionMatrix(21)
        for batch in eval_batches:
            cm.update(logits, batch["label"], mask=batch["mask"])
        metrics = cm.compute()

    Inside a jitted eval step, prefer `confusion_matrix(...)` there and `cm.add(batch_cm)` here: a global
    (sharded-batch) per-step matrix is already summed over hosts, and `add` keeps it as such."""

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((self.num_classes, self.num_classes), np.int64)
        self._global = False

    def update(self, logits_or_preds, targets, mask=None) -> None:
        self.add(_jit_confusion_matrix(logits_or_preds, targets, mask, num_classes=self.num_classes,
                                       ignore_index=self.ignore_index))

    def add(self, batch_cm) -> None:
        """Adds a per-batch matrix; one that is a global (not fully addressable) jax.Array marks the sum global."""
        if isinstance(batch_cm, jax.Array) and not batch_cm.is_fully_addressable:
            self._global = True
            batch_cm = reduce_confusion_matrix(batch_cm)
        self.mat += np.asarray(batch_cm, dtype=np.int64)

    def reset(self) -> None:
        self.mat[:] = 0
        self._global = False

    def reduced(self) -> np.ndarray:
        """The all-host matrix (a collective in multi-host runs: every process must call it)."""
        return self.mat.copy() if self._global else reduce_confusion_matrix(self.mat)

    def compute(self) -> dict[str, Any]:
        return segmentation_metrics(self.reduced())


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def _jit_confusion_matrix(logits_or_preds, targets, mask, *, num_classes, ignore_index):
    return confusion_matrix(logits_or_preds, targets, num_classes, ignore_index, mask)


# ================================================================================================ detection
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _coco_api():
    """(COCO, COCOeval) from pycocotools (the [train] extra)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO mAP needs pycocotools: pip install 'flax-mobilenet[train]' (or pycocotools)") from error
    return COCO, COCOeval


def _host_local(x) -> np.ndarray:
    """This host's rows of a batch array as numpy: a global jax.Array sharded over the batch axis (the output of a
    data-parallel jit across hosts) gives its addressable shards' rows, in order, once each."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        rows: dict[int, np.ndarray] = {}
        for shard in x.addressable_shards:
            index = shard.index
            for axis, part in enumerate(index[1:], start=1):
                if (part.start or 0) != 0 or part.stop not in (None, x.shape[axis]):
                    raise ValueError("detection arrays may be sharded over the batch axis only")
            start = (index[0].start or 0) if index else 0
            rows.setdefault(start, np.asarray(shard.data))
        return np.concatenate([rows[k] for k in sorted(rows)], axis=0)
    return np.asarray(x)


def _pad_axis(x: np.ndarray, axis: int, size: int, value=0) -> np.ndarray:
    if x.shape[axis] == size:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return np.pad(x, pad, constant_values=value)


# per field: dtype, the axis that may grow between batches (None: fixed), padding value
_FIELDS = {
    "det_boxes": (np.float32, 1), "det_scores": (np.float32, 1), "det_labels": (np.int32, 1),
    "num_valid": (np.int32, None),
    "gt_boxes": (np.float32, 1), "gt_labels": (np.int32, 1), "gt_valid": (np.bool_, 1),
    "gt_iscrowd": (np.bool_, 1), "gt_area": (np.float32, 1),
    "image_sizes": (np.int32, None), "image_ids": (np.int64, None), "mask": (np.bool_, None),
}


def concatenate_rows(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row-concatenates per-batch (or per-host) field dicts, padding the detection (D) and ground-truth (M) axes to
    the largest; padded detections lie beyond `num_valid`, padded ground truths have `gt_valid` False."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    out = {}
    for name in parts[0]:
        dtype, axis = _FIELDS[name]
        arrays = [np.asarray(p[name], dtype) for p in parts]
        if axis is not None:
            size = max(a.shape[axis] for a in arrays)
            arrays = [_pad_axis(a, axis, size) for a in arrays]
        out[name] = np.concatenate(arrays, axis=0)
    return out


def gather_to_all(local: dict[str, np.ndarray], fields: Mapping[str, tuple] = _FIELDS) -> dict[str, np.ndarray]:
    """Every process's rows, concatenated in process order, on every process (a collective).  `fields`: name ->
    (dtype, the axis that may differ between processes or None).  Rows and those axes are first padded to the
    maximum over processes (padding rows: mask False), since `process_allgather` needs equal shapes."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils
    names = sorted(local)
    growing = [name for name in names if fields[name][1] is not None]
    sizes = np.array([local["mask"].shape[0], *(local[n].shape[fields[n][1]] for n in growing)], np.int64)
    maxima = np.asarray(multihost_utils.process_allgather(sizes)).max(axis=0)
    rows, width = int(maxima[0]), dict(zip(growing, (int(m) for m in maxima[1:])))
    padded = {}
    for name in names:
        x = local[name]
        if name in width:
            x = _pad_axis(x, fields[name][1], width[name])
        padded[name] = _pad_axis(x, 0, rows)
    gathered = multihost_utils.process_allgather(padded, tiled=True)
    return {name: np.asarray(gathered[name], fields[name][0]) for name in names}


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)  # torchvision's convert_to_xywh: (x1, y1, x2 - x1, y2 - y1)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


class CocoDetectionEvaluator:
    """COCO box mAP over a whole (padded, possibly multi-host) eval set, by pycocotools.

    Ground truth comes either from the batches (`coco_gt=None`: boxes, labels and a valid mask per example; a COCO
    dataset is built from them, areas = box areas unless `gt_area` is given, as torchvision's
    `convert_to_coco_api` does for a non-COCO dataset) or from a real COCO split (`coco_gt`: the path of an
    annotation json, its loaded dict, or a pycocotools `COCO` object; then each batch gives the `image_ids` of its
    rows, the detections must be in those images' original pixels (`detection.postprocess.rescale_detections`), and
    evaluation is restricted to the evaluated images, as torchvision's `CocoEvaluator` does).

        evaluator = CocoDetectionEvaluator()
        for batch in eval_batches:
            dets = postprocess(...)                      # Detections(boxes, scores, labels, num_valid)
            evaluator.add_batch(dets, gt_boxes=batch["boxes"], gt_labels=batch["labels"],
                                gt_valid=batch["boxes_valid"], mask=batch["mask"])
        metrics = evaluator.evaluate()                   # {'AP': ..., 'AP50': ..., ...} on every process
        print(evaluator.summary)                         # COCOeval.summarize()'s table (process 0)

    Detections: boxes (N, D, 4) xyxy pixels, scores (N, D), labels (N, D) ints (category ids), num_valid (N,)
    (rows beyond it are padding). The values are pycocotools' 12 `stats` as floats (names `COCO_STAT_NAMES`), -1
    where undefined (no ground truth at all, or none in an area range), as pycocotools reports them.
    """

    def __init__(self, coco_gt: Any = None, *, category_ids: Optional[Sequence[int]] = None):
        self._coco_gt_source = coco_gt
        self.category_ids = None if category_ids is None else [int(c) for c in category_ids]
        self._parts: list[dict[str, np.ndarray]] = []
        self.summary = ""
        self.coco_eval = None  # the last COCOeval (process 0), for per-category inspection

    # ---------------------------------------------------------------------------------------------- accumulate
    def reset(self) -> None:
        self._parts = []

    def add_batch(self, detections, *, mask=None, gt_boxes=None, gt_labels=None, gt_valid=None, gt_iscrowd=None,
                  gt_area=None, image_sizes=None, image_ids=None) -> None:
        """One padded batch. `detections`: a `Detections` (boxes, scores, labels, num_valid), a mapping with those
        keys, or such a tuple; `mask` (N,): real examples (None: all). Ground truth (needed unless `coco_gt`):
        gt_boxes (N, M, 4) xyxy pixels, gt_labels (N, M), gt_valid (N, M) bools (None: all), optional gt_iscrowd
        (N, M) and gt_area (N, M). image_sizes (N, 2) (h, w), only recorded in the built COCO images. image_ids
        (N,): required with `coco_gt`; otherwise rows without one (-1) get their 1-based position among the real rows
        gathered from all hosts (give ids for all rows or none)."""
        if isinstance(detections, Mapping):
            boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
            num_valid = detections.get("num_valid")
        else:
            boxes, scores, labels, *rest = detections
            num_valid = rest[0] if rest else None
        boxes = _host_local(boxes).astype(np.float32)
        n, d = boxes.shape[:2]
        part = {
            "det_boxes": boxes,
            "det_scores": _host_local(scores).astype(np.float32).reshape(n, d),
            "det_labels": _host_local(labels).astype(np.int32).reshape(n, d),
            "num_valid": (np.full((n,), d, np.int32) if num_valid is None
                          else np.minimum(_host_local(num_valid).astype(np.int32).reshape(n), d)),
            "mask": np.ones((n,), np.bool_) if mask is None else _host_local(mask).reshape(n) > 0,
            "image_sizes": (np.zeros((n, 2), np.int32) if image_sizes is None
                            else _host_local(image_sizes).astype(np.int32).reshape(n, 2)),
            "image_ids": (np.full((n,), -1, np.int64) if image_ids is None
                          else _host_local(image_ids).astype(np.int64).reshape(n)),
        }
        if self._coco_gt_source is not None:
            if image_ids is None:
                raise ValueError("with coco_gt, every batch needs the image_ids of its rows")
            gt_boxes = np.zeros((n, 0, 4), np.float32)  # ground truth comes from the annotations
            gt_labels = gt_valid = gt_iscrowd = gt_area = None
        elif gt_boxes is None or gt_labels is None:
            raise ValueError("without coco_gt, every batch needs gt_boxes and gt_labels")
        gt_boxes = _host_local(gt_boxes).astype(np.float32)
        m = gt_boxes.shape[1]
        part["gt_boxes"] = gt_boxes
        part["gt_labels"] = (np.zeros((n, m), np.int32) if gt_labels is None
                             else _host_local(gt_labels).astype(np.int32).reshape(n, m))
        part["gt_valid"] = (np.ones((n, m), np.bool_) if gt_valid is None
                            else _host_local(gt_valid).reshape(n, m) > 0)
        part["gt_iscrowd"] = (np.zeros((n, m), np.bool_) if gt_iscrowd is None
                              else _host_local(gt_iscrowd).reshape(n, m) > 0)
        wh = np.clip(gt_boxes[..., 2:] - gt_boxes[..., :2], 0, None)
        part["gt_area"] = (wh[..., 0] * wh[..., 1] if gt_area is None
                           else _host_local(gt_area).astype(np.float32).reshape(n, m))
        self._parts.append(part)

    def local_arrays(self) -> dict[str, np.ndarray]:
        """This host's rows so far, padding rows included, as fixed-size arrays (what `evaluate` gathers)."""
        return concatenate_rows(self._parts)

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluate(self) -> dict[str, float]:
        """Gathers every host's rows (a collective: all processes call it), runs COCOeval on process 0 and
        broadcasts the stats; returns the same dict on every process. `self.summary`: the printed table."""
        arrays = self.local_arrays()
        if not arrays:
            raise ValueError("no batch was added")
        arrays = gather_to_all(arrays)
        if jax.process_count() == 1:
            return self.compute(arrays)
        from jax.experimental import multihost_utils
        stats = np.zeros((len(COCO_STAT_NAMES),), np.float64)
        if jax.process_index() == 0:
            result = self.compute(arrays)
            stats = np.array([result[k] for k in COCO_STAT_NAMES], np.float64)
        stats = np.asarray(multihost_utils.broadcast_one_to_all(stats.astype(np.float32)), np.float64)
        return {k: float(v) for k, v in zip(COCO_STAT_NAMES, stats)}

    def compute(self, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        """COCOeval on the gathered arrays of the whole eval set (rows with mask False are dropped)."""
        COCO, COCOeval = _coco_api()
        keep = np.asarray(arrays["mask"], bool)
        a = {k: np.asarray(v)[keep] for k, v in arrays.items()}
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            if self._coco_gt_source is None:
                image_ids = np.where(a["image_ids"] >= 0, a["image_ids"], np.arange(1, len(a["image_ids"]) + 1))
                coco_gt = COCO()
                coco_gt.dataset = self._gt_dataset(a, image_ids)
                coco_gt.createIndex()
            else:
                image_ids = a["image_ids"]
                coco_gt = self._load_gt(COCO)
            results = self._results(a, image_ids)
            coco_dt = coco_gt.loadRes(results) if results else _empty_results(COCO, coco_gt)
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.imgIds = sorted({int(i) for i in image_ids})
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.summary = buffer.getvalue()
        self.coco_eval = coco_eval
        return {k: float(v) for k, v in zip(COCO_STAT_NAMES, coco_eval.stats)}

    def _load_gt(self, COCO):
        source = self._coco_gt_source
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            return COCO(str(source))
        if isinstance(source, Mapping):
            coco = COCO()
            coco.dataset = json.loads(json.dumps(source))
            coco.createIndex()
            return coco
        return source  # a COCO object

    def _gt_dataset(self, a: Mapping[str, np.ndarray], image_ids: np.ndarray) -> dict:
        xywh = _xyxy_to_xywh(a["gt_boxes"])
        images, annotations = [], []
        for row, image_id in enumerate(image_ids):
            height, width = (int(v) for v in a["image_sizes"][row])
            images.append({"id": int(image_id), "height": height, "width": width})
            for j in np.flatnonzero(a["gt_valid"][row]):
                annotations.append({
                    "id": len(annotations) + 1,  # > 0: COCOeval takes id 0 for "unmatched"
                    "image_id": int(image_id), "category_id": int(a["gt_labels"][row, j]),
                    "bbox": [float(v) for v in xywh[row, j]], "area": float(a["gt_area"][row, j]),
                    "iscrowd": int(a["gt_iscrowd"][row, j]),
                })
        categories = self.category_ids
        if categories is None:
            categories = sorted({ann["category_id"] for ann in annotations})
        return {"images": images, "annotations": annotations, "categories": [{"id": int(c)} for c in categories]}

    @staticmethod
    def _results(a: Mapping[str, np.ndarray], image_ids: np.ndarray) -> list[dict]:
        xywh = _xyxy_to_xywh(a["det_boxes"])
        results = []
        for row, image_id in enumerate(image_ids):
            for j in range(int(a["num_valid"][row])):
                results.append({"image_id": int(image_id), "category_id": int(a["det_labels"][row, j]),
                                "bbox": [float(v) for v in xywh[row, j]], "score": float(a["det_scores"][row, j])})
        return results


def _empty_results(COCO, coco_gt):
    """`loadRes` of no detections (pycocotools' own fails on an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                       "categories": list(coco_gt.dataset.get("categories", []))}
    coco_dt.createIndex()
    return coco_dt
