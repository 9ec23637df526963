"""What the trainer does differently per task: the loss, the train metrics, the eval step, how eval results
are accumulated over batches and hosts, and the metric that ranks checkpoints.

Batches (the input pipeline builds them; eval batches add `mask`, 1 for a real example and 0 for padding):

- classification: `image` (N, H, W, 3), `label` (N,) int32;
- segmentation:   `image`, `label` (N, H, W) int32 class per pixel, 255 = ignore;
- detection:      `image`, `boxes` (N, M, 4) float32 xyxy input pixels, `labels` (N, M) int32 (0 = padding
  row), `box_mask` (N, M) bool: a fixed number M of boxes per image.

The trainer jits `loss` inside its train step and `eval_outputs` inside its eval step; the `Evaluation` of a
task runs on the host and returns the same numbers on every process.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .box_ap import BOX_AP_FIELDS, BoxAP
from .evaluation import CocoDetectionEvaluator, confusion_matrix, gather_to_all, segmentation_metrics

Metrics = dict[str, jax.Array]
Outputs = Union[jax.Array, dict[str, jax.Array]]
IGNORE_INDEX = 255  # segmentation pixels that count nowhere (padding, object borders in VOC)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example loss; smoothing as torch's CrossEntropyLoss(label_smoothing=): mix with the uniform target."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k highest logits (a tie with the label counts in its favour)."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


class Evaluation:
    """Host-side accumulation of one weight set's eval outputs over a whole eval set."""

    def add(self, outputs: Any, batch: dict[str, jax.Array]) -> None:
        raise NotImplementedError

    def result(self, expected_examples: int) -> dict[str, float]:
        """Metrics named without the 'eval_' prefix (the trainer adds it); a collective in multi-host runs."""
        raise NotImplementedError


class _Sums(Evaluation):
    """Per-batch sums (already global: the eval step is jitted over the sharded batch), added up on the device."""

    def __init__(self, finish: Callable[[dict[str, float]], dict[str, float]]):
        self.totals: dict[str, Any] = {}
        self.finish = finish

    def add(self, outputs, batch) -> None:
        for key, value in outputs.items():
            self.totals[key] = self.totals[key] + value if key in self.totals else value

    def result(self, expected_examples: int) -> dict[str, float]:
        totals = {k: np.asarray(v, np.float64) for k, v in jax.device_get(self.totals).items()}
        if int(totals["count"]) != expected_examples:
            raise RuntimeError(f"evaluated {int(totals['count'])} examples, expected {expected_examples}")
        return self.finish(totals)


@dataclasses.dataclass(frozen=True)
class Classification:
    name = "classification"
    best_metric = "eval_top1"
    label_smoothing: float = 0.0

    def loss(self, outputs: Outputs, batch: Metrics) -> tuple[jax.Array, Metrics]:
        loss = jnp.mean(cross_entropy(outputs, batch["label"], self.label_smoothing))
        return loss, {"top1": jnp.mean(topk_correct(outputs, batch["label"], 1))}

    def eval_outputs(self, outputs: Outputs, batch: Metrics) -> Metrics:
        """Sums over the real (mask 1) examples of a padded batch."""
        mask = batch["mask"]
        return {"loss": jnp.sum(cross_entropy(outputs, batch["label"]) * mask),
                "top1": jnp.sum(topk_correct(outputs, batch["label"], 1) * mask),
                "top5": jnp.sum(topk_correct(outputs, batch["label"], min(5, outputs.shape[-1])) * mask),
                "count": jnp.sum(mask)}

    def evaluation(self) -> Evaluation:
        return _Sums(lambda t: {"top1": t["top1"] / t["count"], "top5": t["top5"] / t["count"],
                                "loss": t["loss"] / t["count"]})

    @staticmethod
    def describe(results: dict[str, float], prefix: str = "eval") -> str:
        return (f"top-1 {100 * results[f'{prefix}_top1']:.2f}% top-5 {100 * results[f'{prefix}_top5']:.2f}% "
                f"loss {results[f'{prefix}_loss']:.4f}")


def _pixel_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of per-pixel cross-entropy over the counted pixels, their number); 255 and padding examples (weight 0,
    (N,)) count nowhere."""
    valid = (labels != IGNORE_INDEX) & (weights[:, None, None] > 0)
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid)


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """torchvision's segmentation reference: cross-entropy with ignore_index 255 averaged over the counted pixels,
    plus 0.5 x the auxiliary head's (DeepLabV3 with aux_loss); mIoU from a confusion matrix over the eval set."""

    name = "segmentation"
    best_metric = "eval_miou"
    num_classes: int = 21
    aux_weight: float = 0.5

    @staticmethod
    def _heads(outputs: Outputs) -> dict[str, jax.Array]:
        return outputs if isinstance(outputs, dict) else {"out": outputs}

    def loss(self, outputs: Outputs, batch: Metrics) -> tuple[jax.Array, Metrics]:
        heads, labels = self._heads(outputs), batch["label"]
        ones = jnp.ones(labels.shape[:1])
        total, metrics = 0.0, {}
        for name, logits in heads.items():
            loss_sum, count = _pixel_cross_entropy(logits, labels, ones)
            loss = loss_sum / jnp.maximum(count, 1)
            total = total + (1.0 if name == "out" else self.aux_weight) * loss
            if name != "out":
                metrics[f"{name}_loss"] = loss
        valid = labels != IGNORE_INDEX
        correct = jnp.sum((jnp.argmax(heads["out"], -1) == labels) & valid)
        metrics["pixel_accuracy"] = correct / jnp.maximum(jnp.sum(valid), 1)
        return total, metrics

    def eval_outputs(self, outputs: Outputs, batch: Metrics) -> Metrics:
        logits, labels, mask = self._heads(outputs)["out"], batch["label"], batch["mask"]
        loss_sum, pixels = _pixel_cross_entropy(logits, labels, mask)
        return {"confusion": confusion_matrix(logits, labels, self.num_classes, IGNORE_INDEX, mask),
                "loss": loss_sum, "pixels": pixels, "count": jnp.sum(mask)}

    def evaluation(self) -> Evaluation:
        def finish(totals):
            metrics = segmentation_metrics(totals["confusion"])
            # the mean over the classes that occur: torchvision's plain mean whenever every class occurs (a full
            # VOC/COCO val set); a small eval set without some class would make that one NaN
            return {"miou": metrics["mIoU_present"], "pixel_accuracy": metrics["pixel_accuracy"],
                    "loss": float(totals["loss"] / max(totals["pixels"], 1))}
        return _Sums(finish)

    @staticmethod
    def describe(results: dict[str, float], prefix: str = "eval") -> str:
        return (f"mIoU {100 * results[f'{prefix}_miou']:.2f}% pixel accuracy "
                f"{100 * results[f'{prefix}_pixel_accuracy']:.2f}% loss {results[f'{prefix}_loss']:.4f}")


class _BoxMaps(Evaluation):
    """Box mAP both ways users compare: the COCO API's (pycocotools) and ultralytics' validator's (`box_ap`:
    its matching and 101-point `ap_per_class`, about 0.4 points below COCO's on COCO)."""

    def __init__(self, label_offset: int):
        self.coco, self.ultralytics = CocoDetectionEvaluator(), BoxAP()
        self.label_offset = label_offset

    def add(self, outputs, batch) -> None:
        if self.label_offset:  # the model's classes 0..nc-1 are the dataset's labels 1..nc
            outputs = outputs._replace(labels=outputs.labels + self.label_offset)
        self.coco.add_batch(outputs, mask=batch["mask"], gt_boxes=batch["boxes"], gt_labels=batch["labels"],
                            gt_valid=batch["box_mask"])
        self.ultralytics.add_batch(outputs.boxes, outputs.scores, outputs.labels, outputs.num_valid,
                                   gt_boxes=batch["boxes"], gt_labels=batch["labels"], gt_valid=batch["box_mask"],
                                   mask=batch["mask"])

    def result(self, expected_examples: int) -> dict[str, float]:
        counted = int(self.coco.local_arrays()["mask"].sum())
        if jax.process_count() == 1 and counted != expected_examples:
            raise RuntimeError(f"evaluated {counted} examples, expected {expected_examples}")
        stats = self.coco.evaluate()
        ours = self.ultralytics.compute(gather_to_all(self.ultralytics.local_arrays(), BOX_AP_FIELDS))
        return {"map": stats["AP"], "map50": stats["AP50"], "map75": stats["AP75"], "map_small": stats["APs"],
                "map_medium": stats["APm"], "map_large": stats["APl"], "ul_map": ours["map"],
                "ul_map50": ours["map50"], "ul_precision": ours["precision"], "ul_recall": ours["recall"],
                "fitness": ours["fitness"]}


@dataclasses.dataclass(frozen=True)
class Detection:
    """The detection head's own loss (`model.loss_fn`: SSD's matching and hard-negative mining, ...); box mAP of the
    post-processed detections as the COCO API and ultralytics compute it.  Checkpoints rank by the COCO mAP, or for
    heads ported from ultralytics by its fitness (8.4: mAP50-95 of its validator)."""

    name = "detection"
    head_loss: Any = None  # (outputs, batch) -> (loss, metrics), the head's for the training image size
    postprocess: Any = None  # raw outputs -> Detections at the eval image size
    label_offset: int = 0  # dataset label = detection label + offset (1 for heads without a background class)
    best_metric: str = "eval_map"

    def loss(self, outputs: Outputs, batch: Metrics) -> tuple[jax.Array, Metrics]:
        return self.head_loss(outputs, batch)

    def eval_outputs(self, outputs: Outputs, batch: Metrics) -> Any:
        return self.postprocess(jax.tree.map(lambda y: y.astype(jnp.float32), outputs))

    def evaluation(self) -> Evaluation:
        return _BoxMaps(self.label_offset)

    @staticmethod
    def describe(results: dict[str, float], prefix: str = "eval") -> str:
        return (f"box mAP {100 * results[f'{prefix}_map']:.2f} mAP@0.5 {100 * results[f'{prefix}_map50']:.2f} "
                f"mAP@0.75 {100 * results[f'{prefix}_map75']:.2f} (COCO API); mAP50-95 "
                f"{100 * results[f'{prefix}_ul_map']:.2f} mAP50 {100 * results[f'{prefix}_ul_map50']:.2f} "
                f"(ultralytics' validator)")


Task = Union[Classification, Segmentation, Detection]
TASKS = ("classification", "segmentation", "detection")


def create_task(task: str, model: Any, num_classes: int, image_size: int, label_smoothing: float = 0.0) -> Task:
    """The task object of a model (its spec's `task`), set up for `image_size` square inputs."""
    if task == "classification":
        return Classification(label_smoothing)
    if task == "segmentation":
        return Segmentation(num_classes)
    if task == "detection":
        size, head = (image_size, image_size), model.detection_head
        return Detection(model.loss_fn(size), model.postprocessor(size, **head.eval_postprocessing),
                         label_offset=0 if head.background_class else 1,
                         best_metric=head.best_metric)
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
