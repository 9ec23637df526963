"""SSDLite's box predictor (torchvision `SSDLiteHead`, MobileNetV2 paper section 6.2) on several feature maps.

Per map i and per branch (classification, regression): depthwise 3x3 conv-BN-ReLU6, then a 1x1 conv with bias
to anchors * num_classes (or anchors * 4) channels.  torchvision reads that conv's channels as (anchor, value)
and orders the predictions map by map, then location row-major, then anchor (`SSDScoringHead`: view(N, A, K,
H, W) -> permute -> (N, HWA, K)); in NHWC that is a plain reshape of (N, H, W, A * K) to (N, H * W * A, K).

Output: {'bbox_regression': (N, anchors, 4), 'cls_logits': (N, anchors, num_classes)}, in the order of
`anchors(image_size)` (torchvision's `DefaultBoxGenerator`).  `postprocess` turns them into detections
(torchvision's `SSD.postprocess_detections`).  PyTorch keys: `head.{classification,regression}_head.
module_list.I.{0.0, 0.1, 1}` (depthwise conv, its norm, the 1x1 conv).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from ..detection.anchors import (SSDLITE_ASPECT_RATIOS, SSDLITE_MAX_RATIO, SSDLITE_MIN_RATIO, default_boxes,
                                 num_anchors_per_location)
from ..detection.loss import ssd_loss
from ..detection.postprocess import Detections, postprocess
from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings, PointwiseConv
from . import channels_of

BRANCHES = (("classification_head", "cls_logits"), ("regression_head", "bbox_regression"))  # torchvision's order
ANCHORS_FILE = "anchors.npy"  # the anchors beside an export of the raw outputs


@dataclasses.dataclass(frozen=True)
class SsdliteSpec:
    task: ClassVar[str] = "detection"
    in_features: tuple[int, ...]  # channels of each feature map
    feature_taps: tuple[str, ...]  # the backbone's `feature_info` name of each map
    strides: tuple[int, ...]  # output stride of each map: its size is ceil(input size / stride)
    aspect_ratios: tuple[tuple[float, ...], ...] = SSDLITE_ASPECT_RATIOS  # DefaultBoxGenerator's, per map
    min_ratio: float = SSDLITE_MIN_RATIO
    max_ratio: float = SSDLITE_MAX_RATIO
    kernel_size: int = 3  # of the depthwise conv
    torch_prefix: str = "head"
    bn_eps: float = 1e-3  # torchvision's SSDLite norm_layer: BatchNorm2d(eps=0.001, momentum=0.03) everywhere
    bn_momentum: float = 0.03
    # torchvision SSD's post-processing settings for ssdlite320_mobilenet_v3_large
    score_threshold: float = 0.001
    nms_iou: float = 0.55
    topk_candidates: int = 300
    detections_per_img: int = 300
    upsample: ClassVar[bool] = False  # the builder returns the per-anchor outputs as they are
    background_class: ClassVar[bool] = True  # class 0 is the background (torchvision): labels 1..nc-1
    train_recipe: ClassVar[str] = "ssdlite"  # the default augmentation (training/transforms.DETECTION_RECIPES)
    eval_postprocessing: ClassVar[Mapping[str, object]] = {}  # torchvision's thresholds
    best_metric: ClassVar[str] = "eval_map"  # COCO mAP

    def __post_init__(self) -> None:
        counts = {len(self.in_features), len(self.feature_taps), len(self.strides), len(self.aspect_ratios)}
        if len(counts) != 1:
            raise ValueError(f"SSDLite head: {len(self.feature_taps)} taps, {len(self.in_features)} channel counts, "
                             f"{len(self.strides)} strides and {len(self.aspect_ratios)} aspect-ratio lists")

    @classmethod
    def on(cls, info: Mapping[str, object], taps: Sequence[str], **options) -> "SsdliteSpec":
        """The head on a backbone's taps, channels and strides read from its `feature_info`."""
        taps = tuple(taps)
        options.setdefault("aspect_ratios", (SSDLITE_ASPECT_RATIOS[0],) * len(taps))
        return cls(tuple(channels_of(info, tap) for tap in taps), taps,
                   tuple(int(getattr(info[tap], "stride")) for tap in taps), **options)

    @property
    def taps(self) -> dict[str, str]:
        return {str(i): tap for i, tap in enumerate(self.feature_taps)}  # roles: torchvision's OrderedDict keys

    @property
    def num_anchors(self) -> tuple[int, ...]:
        """Default boxes per location of each map (2 + 2 per aspect ratio)."""
        return tuple(num_anchors_per_location(self.aspect_ratios))

    def feature_sizes(self, image_size: Sequence[int]) -> list[tuple[int, int]]:
        """(height, width) of each map for an input of (height, width): every striding layer of the backbones
        here is an odd-kernel conv (or pool) with PyTorch's symmetric padding (k - 1) / 2, n -> ceil(n / s)."""
        height, width = int(image_size[0]), int(image_size[1])
        return [(-(-height // stride), -(-width // stride)) for stride in self.strides]

    def anchors(self, image_size: Sequence[int]) -> np.ndarray:
        """The default boxes for an input of (height, width): (anchors, 4) float32 xyxy input pixels, in the
        order of the head's outputs (torchvision's `DefaultBoxGenerator`, bit for bit)."""
        return default_boxes(self.feature_sizes(image_size), image_size, self.aspect_ratios, self.min_ratio,
                             self.max_ratio)

    def postprocessor(self, image_size: Sequence[int], anchors: Optional[np.ndarray] = None,
                      **options) -> Callable[[Mapping[str, jax.Array]], Detections]:
        """`outputs -> Detections` for inputs of (height, width), as torchvision's `SSD.postprocess_detections`
        (jit-able; `options` override score_threshold, nms_iou, topk_candidates, detections_per_img and give
        nms_method).  Boxes are in input pixels (`detection.rescale_detections` maps them to the original)."""
        settings = dict(score_threshold=self.score_threshold, nms_iou=self.nms_iou,
                        topk_candidates=self.topk_candidates, detections_per_img=self.detections_per_img)
        unknown = sorted(set(options) - set(settings) - {"nms_method"})
        if unknown:
            raise TypeError(f"postprocess does not take {', '.join(unknown)}; it takes "
                            f"{', '.join([*settings, 'nms_method'])}")
        settings.update(options)
        image_size = (int(image_size[0]), int(image_size[1]))
        anchors = self.anchors(image_size) if anchors is None else anchors

        def run(outputs: Mapping[str, jax.Array]) -> Detections:
            return postprocess(outputs["bbox_regression"], outputs["cls_logits"], anchors, image_size, **settings)

        return run

    def postprocess(self, outputs: Mapping[str, jax.Array], image_size: Sequence[int],
                    anchors: Optional[np.ndarray] = None, **options) -> Detections:
        """Detections from the head's outputs for inputs of (height, width): `postprocessor(...)(outputs)`."""
        return self.postprocessor(image_size, anchors, **options)(outputs)

    def raw_outputs(self, num_classes: int) -> tuple[tuple[str, str], ...]:
        return (("bbox_regression", f"(batch, anchors, 4) box codes against the anchors ({ANCHORS_FILE} or "
                                    "model.anchors), weights (10, 10, 5, 5)"),
                ("cls_logits", "(batch, anchors, num_classes) class logits, 0 = background"))

    def side_files(self, image_size: Sequence[int]) -> dict[str, tuple[np.ndarray, str]]:
        return {ANCHORS_FILE: (np.asarray(self.anchors(image_size), np.float32),
                               "(anchors, 4) float32 xyxy input pixels, in the order of the outputs")}

    def loss_fn(self, image_size: Sequence[int], **options) -> Callable:
        """torchvision's SSD training loss: SSDMatcher(0.5) matching, smooth-L1 box loss on the (10, 10, 5, 5)
        codes, hard-negative-mined (3:1) cross-entropy."""
        anchors = jax.numpy.asarray(self.anchors(image_size))

        def loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> tuple[jax.Array, dict]:
            losses = ssd_loss(outputs["bbox_regression"].astype(jax.numpy.float32),
                              outputs["cls_logits"].astype(jax.numpy.float32), anchors, batch["boxes"],
                              batch["labels"], batch["box_mask"], **options)
            return losses["bbox_regression"] + losses["classification"], {
                "box_loss": losses["bbox_regression"], "class_loss": losses["classification"]}

        return loss

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        return SsdliteHead(self, num_classes, settings, name=name)

    def torch_tensors(self, num_classes: int, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        for branch, _ in BRANCHES:
            width = num_classes if branch == "classification_head" else 4
            for i, (channels, anchors) in enumerate(zip(self.in_features, self.num_anchors)):
                key = lambda *parts: tk.join(self.torch_prefix, branch, "module_list", str(i), *parts)  # noqa: E731
                path = (*flax_path, f"{branch}_{i}")
                yield from tk.conv_norm((*path, "depthwise"), key("0.0"), key("0.1"), channels, channels,
                                        self.kernel_size, depthwise=True)
                yield from tk.conv((*path, "project"), key("1"), channels, anchors * width, 1, bias=True)


class PredictionBlock(nn.Module):
    """torchvision `ssdlite._prediction_block`: depthwise conv-BN-ReLU6, then a 1x1 conv with bias."""

    features: int
    kernel_size: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = ConvNormAct(x.shape[-1], self.kernel_size, depthwise=True, act="relu6", settings=self.settings,
                        name="depthwise")(x, train)
        return PointwiseConv(self.features, True, self.settings.dtype, name="project")(x)


class SsdliteHead(nn.Module):
    spec: SsdliteSpec
    num_classes: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
        spec = self.spec
        settings = dataclasses.replace(self.settings, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        maps = [features[role] for role in spec.taps]
        outputs = {}
        for branch, output in BRANCHES:
            width = self.num_classes if branch == "classification_head" else 4
            results = []
            for i, (x, anchors) in enumerate(zip(maps, spec.num_anchors)):
                y = PredictionBlock(anchors * width, spec.kernel_size, settings, name=f"{branch}_{i}")(x, train)
                results.append(y.reshape(y.shape[0], -1, width))  # (N, H, W, A * K) -> (N, HWA, K)
            outputs[output] = jax.numpy.concatenate(results, axis=1)
        return {"bbox_regression": outputs["bbox_regression"], "cls_logits": outputs["cls_logits"]}
