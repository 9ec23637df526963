"""YOLO's anchor-free detection head (ultralytics `Detect`: YOLOv8, YOLOv5u, YOLO11) on three maps (P3-P5).

Per map i: a box branch Conv3x3(c, c2) -> Conv3x3(c2, c2) -> conv1x1(c2, 4 * reg_max) with bias (`cv2.i`), and a
class branch (`cv3.i`): Conv3x3(c, c3) -> Conv3x3(c3, c3) -> conv1x1(c3, nc) in the v5u/v8 YAMLs (ultralytics'
`legacy`), or [DWConv3x3(c) -> Conv1x1(c, c3)] -> [DWConv3x3(c3) -> Conv1x1(c3, c3)] -> conv1x1(c3, nc) in YOLO11;
c2 = max(16, c_P3 / 4, 4 * reg_max), c3 = max(c_P3, min(nc, 100)).  Conv = conv-BN-SiLU.

Decoding (DFL): each side's reg_max logits -> softmax -> expected bin = its distance to the anchor point (the
cell centre, x + 0.5, y + 0.5) in strides; the box is cx, cy, w, h in input pixels.  The fixed DFL weights
(arange(reg_max), `dfl.conv.weight`) are checked at conversion and computed here.

Outputs (anchors level P3 -> P5, each row-major): 'predictions' (N, A, 4 + nc) = ultralytics' eval output `y`
transposed (cx, cy, w, h, sigmoid class scores); for training 'box_distributions' (N, A, 4 * reg_max) logits
(channel = side * reg_max + bin, sides l, t, r, b) and 'class_logits' (N, A, nc).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..detection.yolo_postprocess import YOLO_PRESETS, yolo_postprocess
from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings, PointwiseConv
from . import MultiTapHead

CLASS_BRANCHES = ("legacy", "yolo11")


def anchor_points(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(A, 2) cell centres in grid units (x + 0.5, y + 0.5) and (A, 1) their strides, level by level, row-major
    (ultralytics' `make_anchors`)."""
    points, point_strides = [], []
    for (height, width), stride in zip(feature_sizes, strides):
        y, x = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                           indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()], axis=-1))
        point_strides.append(np.full((height * width, 1), stride, np.float32))
    return np.concatenate(points), np.concatenate(point_strides)


def dfl_decode(box_distributions: jax.Array, points: jax.Array, strides: jax.Array, reg_max: int) -> jax.Array:
    """(N, A, 4 * reg_max) logits -> (N, A, 4) cx, cy, w, h in input pixels (ultralytics' DFL + dist2bbox)."""
    n, a, _ = box_distributions.shape
    probabilities = jax.nn.softmax(box_distributions.reshape(n, a, 4, reg_max), axis=-1)
    distances = probabilities @ jnp.arange(reg_max, dtype=probabilities.dtype)  # (N, A, 4): l, t, r, b
    top_left, bottom_right = points - distances[..., :2], points + distances[..., 2:]
    return jnp.concatenate([(top_left + bottom_right) / 2, bottom_right - top_left], axis=-1) * strides


def preset_postprocessor(postprocess: Callable, presets: Mapping[str, dict], preset: str,
                         options: Mapping[str, object]) -> Callable[[Mapping[str, jax.Array]], object]:
    """`outputs -> Detections`: `postprocess` on 'predictions' with a reference's preset ('predict' or 'val')
    and `options` over it; an unknown preset or option is named with the ones there are."""
    if preset not in presets:
        raise ValueError(f"unknown post-processing preset {preset!r}; one of {', '.join(presets)}")
    allowed = {"conf_threshold", "iou_threshold", "multi_label", "max_det", "agnostic", "max_candidates", "classes",
               "nms_method"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"YOLO post-processing does not take {', '.join(unknown)}; it takes preset and "
                        f"{', '.join(sorted(allowed))}")
    settings = {**presets[preset], **options}
    return lambda outputs: postprocess(outputs["predictions"], **settings)


@dataclasses.dataclass(frozen=True)
class YoloDetectSpec(MultiTapHead):
    task: ClassVar[str] = "detection"
    upsample: ClassVar[bool] = False  # the builder returns the per-anchor outputs as they are
    background_class: ClassVar[bool] = False  # nc real classes 0..nc-1; a dataset's label k is class k - 1
    train_recipe: ClassVar[str] = "yolo"  # ultralytics' v8_transforms (training/transforms.DETECTION_RECIPES)
    eval_postprocessing: ClassVar[Mapping[str, object]] = {"preset": "val"}  # mAP as the reference's validator computes it (conf 0.001)
    best_metric: ClassVar[str] = "eval_fitness"  # ultralytics' fitness (8.4: its mAP50-95)
    in_features: tuple[int, ...]  # channels of P3, P4, P5
    feature_taps: tuple[str, ...]  # their `feature_info` names (neck maps)
    strides: tuple[int, ...]
    torch_prefix: str  # 'model.22' in yolov8n
    class_branch: str = "legacy"  # one of CLASS_BRANCHES
    reg_max: int = 16
    postprocess_preset: str = "predict"  # ultralytics' predict settings (conf 0.25, IoU 0.7); 'val' for mAP

    def __post_init__(self) -> None:
        if self.class_branch not in CLASS_BRANCHES:
            raise ValueError(f"class_branch must be one of {CLASS_BRANCHES}, got {self.class_branch!r}")
        if not len(self.in_features) == len(self.feature_taps) == len(self.strides):
            raise ValueError("YOLO Detect: one channel count and stride per tap")

    @property
    def box_features(self) -> int:
        return max(16, self.in_features[0] // 4, 4 * self.reg_max)

    def class_features(self, num_classes: int) -> int:
        return max(self.in_features[0], min(num_classes, 100))

    def raw_outputs(self, num_classes: int) -> tuple[tuple[str, str], ...]:
        return (("predictions", f"(batch, anchors, 4 + {num_classes}) cx, cy, w, h in input pixels, then sigmoid "
                                "class scores (ultralytics' eval output, transposed); anchors P3 -> P5, row-major"),)

    def side_files(self, image_size: Sequence[int]) -> dict[str, tuple[np.ndarray, str]]:
        return {}  # the predictions are decoded boxes

    def postprocessor(self, image_size: Sequence[int], preset: Optional[str] = None,
                      **options) -> Callable[[Mapping[str, jax.Array]], object]:
        """ultralytics' `non_max_suppression` on 'predictions', static shapes, jit-able: the reference's
        predict settings (`preset='val'`: its validation settings), `options` overriding them (conf_threshold,
        iou_threshold, multi_label, max_det, agnostic, max_candidates, classes, nms_method)."""
        return preset_postprocessor(yolo_postprocess, YOLO_PRESETS, preset or self.postprocess_preset, options)

    def loss_fn(self, image_size: Sequence[int], **options) -> Callable:
        """ultralytics 8.4's v8DetectionLoss for inputs of (height, width) (`detection.yolo_loss`): task-aligned
        assignment, BCE classes, CIoU boxes, DFL; `options` override the gains box (7.5), cls (0.5), dfl (1.5).
        -> `loss(outputs, batch) -> (total, {'box_loss', 'class_loss', 'dfl_loss'})`, batch 'boxes' (N, M, 4) xyxy
        pixels, 'labels' (N, M) 1-based (0: background), 'box_mask' (N, M); total = items' sum x batch size."""
        from ..detection.yolo_loss import YOLOV8_GAINS, yolov8_loss  # here: this method is the head's only user

        unknown = sorted(set(options) - set(YOLOV8_GAINS))
        if unknown:
            raise TypeError(f"the YOLO loss does not take {', '.join(unknown)}; it takes "
                            f"{', '.join(sorted(YOLOV8_GAINS))} (gains)")
        gains = {**YOLOV8_GAINS, **options}
        height, width = image_size[0], image_size[1]
        sizes = [(-(-height // s), -(-width // s)) for s in self.strides]
        points, strides = anchor_points(sizes, self.strides)  # numpy: constants of the traced loss
        min_side = float(self.strides[1] if len(self.strides) > 1 else self.strides[0])  # the assigner's stride_val

        def loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
            items = yolov8_loss(outputs["box_distributions"].astype(jnp.float32),
                                outputs["class_logits"].astype(jnp.float32), points, strides, batch["boxes"],
                                jnp.asarray(batch["labels"]) - 1, batch["box_mask"], reg_max=self.reg_max,
                                min_side=min_side, **gains)
            total = items.pop("total")
            return total, items

        return loss

    def bias_init(self, num_classes: int, stride: int) -> tuple[float, float]:
        """ultralytics' `bias_init`: box 2.0, class log(5 / nc / (640 / stride)^2)."""
        return 2.0, math.log(5 / num_classes / (640 / stride) ** 2)

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        return YoloDetect(self, num_classes, settings, name=name)

    def torch_tensors(self, num_classes: int, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c2, c3 = self.box_features, self.class_features(num_classes)
        key = lambda *parts: tk.join(self.torch_prefix, *parts)  # noqa: E731
        for i, channels in enumerate(self.in_features):
            path = (*flax_path, f"box_{i}")
            yield from tk.conv_norm((*path, "conv_0"), key(f"cv2.{i}.0.conv"), key(f"cv2.{i}.0.bn"), channels, c2, 3)
            yield from tk.conv_norm((*path, "conv_1"), key(f"cv2.{i}.1.conv"), key(f"cv2.{i}.1.bn"), c2, c2, 3)
            yield from tk.conv((*path, "predict"), key(f"cv2.{i}.2"), c2, 4 * self.reg_max, 1, bias=True)
        for i, channels in enumerate(self.in_features):
            path = (*flax_path, f"class_{i}")
            if self.class_branch == "legacy":
                yield from tk.conv_norm((*path, "conv_0"), key(f"cv3.{i}.0.conv"), key(f"cv3.{i}.0.bn"), channels,
                                        c3, 3)
                yield from tk.conv_norm((*path, "conv_1"), key(f"cv3.{i}.1.conv"), key(f"cv3.{i}.1.bn"), c3, c3, 3)
            else:
                for j, (c_in, c_out) in enumerate(((channels, c3), (c3, c3))):
                    yield from tk.conv_norm((*path, f"depthwise_{j}"), key(f"cv3.{i}.{j}.0.conv"),
                                            key(f"cv3.{i}.{j}.0.bn"), c_in, c_in, 3, depthwise=True)
                    yield from tk.conv_norm((*path, f"pointwise_{j}"), key(f"cv3.{i}.{j}.1.conv"),
                                            key(f"cv3.{i}.{j}.1.bn"), c_in, c_out, 1)
            yield from tk.conv((*path, "predict"), key(f"cv3.{i}.2"), c3, num_classes, 1, bias=True)
        yield from tk.fixed(key("dfl.conv.weight"), np.arange(self.reg_max, dtype=np.float32).reshape(1, -1, 1, 1))


class YoloDetect(nn.Module):
    spec: YoloDetectSpec
    num_classes: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
        spec, settings = self.spec, self.settings
        maps = [features[role] for role in spec.taps]
        box_logits, class_logits, sizes = [], [], []
        for i, x in enumerate(maps):
            sizes.append(x.shape[1:3])
            box_bias, class_bias = spec.bias_init(self.num_classes, spec.strides[i])
            box = YoloBranch(4 * spec.reg_max, spec.box_features, "legacy", box_bias, settings, name=f"box_{i}")
            cls = YoloBranch(self.num_classes, spec.class_features(self.num_classes), spec.class_branch, class_bias,
                             settings, name=f"class_{i}")
            box_logits.append(box(x, train).reshape(x.shape[0], -1, 4 * spec.reg_max))
            class_logits.append(cls(x, train).reshape(x.shape[0], -1, self.num_classes))
        box_logits = jnp.concatenate(box_logits, axis=1).astype(jnp.float32)
        class_logits = jnp.concatenate(class_logits, axis=1).astype(jnp.float32)
        points, strides = anchor_points(sizes, spec.strides)
        boxes = dfl_decode(box_logits, jnp.asarray(points), jnp.asarray(strides), spec.reg_max)
        return {"predictions": jnp.concatenate([boxes, jax.nn.sigmoid(class_logits)], axis=-1),
                "box_distributions": box_logits, "class_logits": class_logits}


class YoloBranch(nn.Module):
    """One branch of one level: two 3x3 conv-BN-SiLU (or YOLO11's depthwise + pointwise pairs), then a 1x1 conv
    with bias to `features` outputs (initialised to `bias`, as ultralytics' `bias_init`)."""

    features: int
    hidden: int
    form: str  # 'legacy' | 'yolo11'
    bias: float
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        settings = self.settings
        if self.form == "legacy":
            x = ConvNormAct(self.hidden, 3, act="silu", settings=settings, name="conv_0")(x, train)
            x = ConvNormAct(self.hidden, 3, act="silu", settings=settings, name="conv_1")(x, train)
        else:
            for j in range(2):
                x = ConvNormAct(x.shape[-1], 3, depthwise=True, act="silu", settings=settings,
                                name=f"depthwise_{j}")(x, train)
                x = ConvNormAct(self.hidden, 1, act="silu", settings=settings, name=f"pointwise_{j}")(x, train)
        return PointwiseConv(self.features, True, settings.dtype, bias_init=nn.initializers.constant(self.bias),
                             name="predict")(x)
