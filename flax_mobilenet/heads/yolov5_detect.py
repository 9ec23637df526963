"""YOLOv5's anchor-based detection head (the `yolov5` 7.0 package's `Detect`, YOLOv5 v6.0) on three maps (P3-P5).

Per map i: one 1x1 conv with bias to anchors * (5 + nc) channels (`m.i`), read as (anchor, value).  Every value
goes through a sigmoid s; with the cell (x, y) and the map's stride: xy = (2 s + (x, y) - 0.5) * stride,
wh = (2 s)^2 * anchor (pixels); objectness and class scores stay sigmoids.  The anchors are a buffer of the
reference (`anchors`, (levels, 3, 2) in grid units = pixels / stride): conversion checks them against the spec's
(a checkpoint whose AutoAnchor changed them names the override to pass).

Outputs in the reference's order (level, anchor, y, x): 'predictions' (N, A, 5 + nc) = yolov5's eval output
(cx, cy, w, h in input pixels, objectness, class scores); for training 'logits' (N, A, 5 + nc), the same before
the sigmoid and decoding.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..detection.yolo_postprocess import YOLOV5_PRESETS, yolov5_postprocess
from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings, PointwiseConv
from . import MultiTapHead
from .yolo_detect import preset_postprocessor

# YOLOv5's default anchors (pixels; its YAMLs' P3/8, P4/16, P5/32 rows): three (w, h) per level.
YOLOV5_ANCHORS = (((10, 13), (16, 30), (33, 23)), ((30, 61), (62, 45), (59, 119)),
                  ((116, 90), (156, 198), (373, 326)))


def anchors_buffer(anchors: Sequence, strides: Sequence[int]) -> np.ndarray:
    """The reference's `anchors` buffer: (levels, anchors, 2) float32 in grid units (pixels / stride)."""
    return np.asarray(anchors, np.float32) / np.asarray(strides, np.float32)[:, None, None]


@dataclasses.dataclass(frozen=True)
class Yolov5DetectSpec(MultiTapHead):
    task: ClassVar[str] = "detection"
    upsample: ClassVar[bool] = False
    background_class: ClassVar[bool] = False  # nc real classes 0..nc-1; a dataset's label k is class k - 1
    train_recipe: ClassVar[str] = "yolo"  # ultralytics' v8_transforms (training/transforms.DETECTION_RECIPES)
    eval_postprocessing: ClassVar[Mapping[str, object]] = {"preset": "val"}  # mAP as the reference's validator computes it (conf 0.001)
    best_metric: ClassVar[str] = "eval_fitness"  # ultralytics' fitness (8.4: its mAP50-95)
    in_features: tuple[int, ...]  # channels of P3, P4, P5
    feature_taps: tuple[str, ...]
    strides: tuple[int, ...]
    torch_prefix: str  # 'model.24' in yolov5n
    anchors: tuple[tuple[tuple[float, float], ...], ...] = YOLOV5_ANCHORS  # pixels, per level
    postprocess_preset: str = "predict"  # detect.py's settings (conf 0.25, IoU 0.45, max_det 1000)

    def __post_init__(self) -> None:
        if not len(self.in_features) == len(self.feature_taps) == len(self.strides) == len(self.anchors):
            raise ValueError("YOLOv5 Detect: one channel count, stride and anchor row per tap")
        if len({len(row) for row in self.anchors}) != 1:
            raise ValueError(f"YOLOv5 Detect: every level needs the same number of anchors, got {self.anchors}")

    @property
    def anchors_per_level(self) -> int:
        return len(self.anchors[0])

    def raw_outputs(self, num_classes: int) -> tuple[tuple[str, str], ...]:
        return (("predictions", f"(batch, anchors, 5 + {num_classes}) cx, cy, w, h in input pixels, objectness, "
                                "class scores (yolov5's eval output); order (level, anchor, y, x)"),)

    def side_files(self, image_size: Sequence[int]) -> dict[str, tuple[np.ndarray, str]]:
        return {}

    def postprocessor(self, image_size: Sequence[int], preset: Optional[str] = None,
                      **options) -> Callable[[Mapping[str, jax.Array]], object]:
        """yolov5's `non_max_suppression` (score = objectness x class score) on 'predictions', static shapes, jit-able: the reference's
        predict settings (`preset='val'`: its validation settings), `options` overriding them (conf_threshold,
        iou_threshold, multi_label, max_det, agnostic, max_candidates, classes, nms_method)."""
        return preset_postprocessor(yolov5_postprocess, YOLOV5_PRESETS, preset or self.postprocess_preset, options)

    def loss_fn(self, image_size: Sequence[int], **options) -> Callable:
        """yolov5 7.0's `ComputeLoss` (detection/yolov5_loss.py) for training at (height, width): `(outputs, batch)
        -> (total, {'box_loss', 'object_loss', 'class_loss'})` on 'logits', float32, jit-able.  hyp.scratch-low's
        settings, `options` overriding them (box, cls, obj, anchor_t, cls_pw, obj_pw, label_smoothing, balance),
        the gains then rescaled as train.py does (3 / levels, classes / 80, (imgsz / 640)^2 with imgsz the
        training side, max(height, width))."""
        from ..detection.yolov5_loss import yolov5_gains, yolov5_hyperparameters, yolov5_loss

        hyp = yolov5_hyperparameters(**options)
        height, width = (int(v) for v in image_size)
        anchors = anchors_buffer(self.anchors, self.strides)
        levels = len(self.strides)

        def loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
            logits = outputs["logits"].astype(jnp.float32)
            gains = yolov5_gains(hyp, levels, logits.shape[-1] - 5, max(height, width))
            losses = yolov5_loss(logits, batch["boxes"], batch["labels"], batch["box_mask"], (height, width),
                                 self.strides, anchors, gains, hyp)
            return losses["total"], {k: losses[k] for k in ("box_loss", "object_loss", "class_loss")}

        return loss

    def bias_init(self, num_classes: int, stride: int) -> np.ndarray:
        """yolov5's `_initialize_biases` on a zero bias: objectness log(8 / (640 / s)^2), classes
        log(0.6 / (nc - 0.99999)), per anchor."""
        row = np.zeros(5 + num_classes, np.float32)
        row[4] = math.log(8 / (640 / stride) ** 2)
        row[5:] = math.log(0.6 / (num_classes - 0.99999))
        return np.tile(row, self.anchors_per_level)

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        return Yolov5Detect(self, num_classes, settings, name=name)

    def torch_tensors(self, num_classes: int, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        width = self.anchors_per_level * (5 + num_classes)
        for i, channels in enumerate(self.in_features):
            yield from tk.conv((*flax_path, f"predict_{i}"), tk.join(self.torch_prefix, f"m.{i}"), channels, width, 1,
                               bias=True)
        strides = np.asarray(self.strides, np.float32)[:, None, None]

        def hint(checkpoint: np.ndarray) -> str:
            pixels = np.round(checkpoint * strides, 4).tolist()
            return (f"its anchors differ from this model's (AutoAnchor recomputes them for a dataset); convert with "
                    f"anchors={pixels} (--override 'anchors={pixels}')")

        yield from tk.fixed(tk.join(self.torch_prefix, "anchors"), anchors_buffer(self.anchors, self.strides), hint)


class Yolov5Detect(nn.Module):
    spec: Yolov5DetectSpec
    num_classes: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
        spec, values = self.spec, 5 + self.num_classes
        count = spec.anchors_per_level
        logits, predictions = [], []
        for i, role in enumerate(spec.taps):
            x = features[role]
            bias = jnp.asarray(spec.bias_init(self.num_classes, spec.strides[i]))
            y = PointwiseConv(count * values, True, self.settings.dtype, bias_init=lambda *_: bias,
                              name=f"predict_{i}")(x).astype(jnp.float32)
            n, height, width, _ = y.shape
            y = y.reshape(n, height, width, count, values).transpose(0, 3, 1, 2, 4)  # (N, anchor, y, x, value)
            s = jax.nn.sigmoid(y)
            grid_y, grid_x = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32),
                                         indexing="ij")
            grid = np.stack([grid_x, grid_y], axis=-1) - 0.5  # (y, x, 2)
            anchor_px = np.asarray(spec.anchors[i], np.float32)[:, None, None, :]  # (anchor, 1, 1, 2)
            xy = (s[..., :2] * 2 + grid) * spec.strides[i]
            wh = (s[..., 2:4] * 2) ** 2 * anchor_px
            decoded = jnp.concatenate([xy, wh, s[..., 4:]], axis=-1)
            predictions.append(decoded.reshape(n, -1, values))
            logits.append(y.reshape(n, -1, values))
        return {"predictions": jnp.concatenate(predictions, axis=1), "logits": jnp.concatenate(logits, axis=1)}
