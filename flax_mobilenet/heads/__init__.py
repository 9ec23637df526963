"""Dense-prediction heads: what replaces the classifier of a segmentation model.

Each head kind lives in one file, the way block kinds live in `blocks/`: its spec (a frozen dataclass
with its channels, the feature taps it reads and its PyTorch module prefix), its Flax module and its
PyTorch key mapping.  The builder, the converter and BatchNorm folding know a head only through the
`Head` protocol below; a model's `ModelSpec.head` is then a `DenseHeads` instead of a `ClassifierSpec`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import flax.linen as nn
import numpy as np

from ..layers.conv import LayerSettings
from ..layers.torch_keys import FlaxPath, TensorMapping
from .resize import resize_bilinear


class Head(Protocol):
    """What every head kind's spec provides."""

    torch_prefix: str  # its module path in the reference's state dict ('classifier', 'aux_classifier')
    task: str  # 'segmentation' | 'detection': what the model does (picks predict/train/export paths)
    # Optional, default True: the builder upsamples the head's logits to the input size.  False: it returns the
    # head's output as it is (an array or a dict of arrays: SSDLite's per-anchor predictions).
    upsample: bool

    @property
    def taps(self) -> dict[str, str]:
        """The head's inputs: role -> feature tap name of the backbone (`feature_info`), e.g. {'low': 'features.4'}."""

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        """The Flax module, called as `module({role: feature map}, train)` -> logits (N, h, w, num_classes)
        at the head's own resolution (the builder upsamples them to the input size)."""

    def torch_tensors(self, num_classes: int, flax_path: FlaxPath) -> Iterator[TensorMapping]:
        """Every tensor of the head in the reference's state dict (under `torch_prefix`)."""


class DetectionHead(Head, Protocol):
    """What a detection head kind adds: everything specific to it, so that predict, export and the trainer need
    no per-kind code.  Its module returns a dict of named raw outputs (N, anchors, ...)."""

    background_class: bool  # class 0 is a background class (SSD), or every class is real (YOLO: dataset label - 1)
    train_recipe: str  # its default training augmentation (`training.transforms.DETECTION_RECIPES`)
    eval_postprocessing: Mapping[str, Any]  # the `postprocessor` options the trainer's mAP uses
    best_metric: str  # what ranks a run's checkpoints ('eval_map': COCO's; 'eval_fitness': ultralytics')

    def raw_outputs(self, num_classes: int) -> tuple[tuple[str, str], ...]:
        """(name, meaning) of the outputs an export ships and checks numerically, in order (SSD:
        'bbox_regression', 'cls_logits'; YOLO: 'predictions').  Other keys `apply` returns are for training."""

    def postprocessor(self, image_size: Sequence[int], **options: Any) -> Callable[[Mapping[str, Any]], Any]:
        """`outputs -> detection.Detections` for inputs of (height, width), boxes in input pixels; jit-able;
        `options` override the head's thresholds and give `nms_method` (the ONNX export's NonMaxSuppression)."""

    def side_files(self, image_size: Sequence[int]) -> dict[str, tuple[np.ndarray, str]]:
        """What an export of the raw outputs needs beside them to be decoded: file name -> (array, meaning)
        (SSD: anchors.npy)."""

    def loss_fn(self, image_size: Sequence[int], **options: Any) -> Callable[[Mapping[str, Any], Mapping[str, Any]],
                                                                            tuple[Any, dict[str, Any]]]:
        """`(outputs, batch) -> (loss, metrics)` for training at (height, width); jit-able.  The batch holds
        `boxes` (N, M, 4) xyxy input pixels, `labels` (N, M) and `box_mask` (N, M)."""


@dataclasses.dataclass(frozen=True)
class DenseHeads:
    """The heads of a dense-prediction model, by output name (torchvision's 'out', 'aux').

    Each head's logits are upsampled (bilinear, align_corners=False) to the input size.  A model with
    one head returns its logits (N, H, W, num_classes); with several it returns {output: logits}.
    """

    heads: tuple[tuple[str, Head], ...]

    @property
    def task(self) -> str:
        return self.heads[0][1].task

    @property
    def taps(self) -> tuple[str, ...]:
        """Every feature tap the heads read, each once, in order."""
        return tuple(dict.fromkeys(tap for _, head in self.heads for tap in head.taps.values()))

    @staticmethod
    def module_name(head: Head) -> str:
        """The Flax name of a head's module: its PyTorch prefix with '_' for '.'."""
        return head.torch_prefix.replace(".", "_")

    def torch_tensors(self, num_classes: int) -> Iterator[TensorMapping]:
        for _, head in self.heads:
            yield from head.torch_tensors(num_classes, (self.module_name(head),))


def channels_of(info: Mapping[str, object], tap: str) -> int:
    """The channels of feature tap `tap` in a model's `feature_info` (naming the taps there when unknown)."""
    if tap not in info:
        raise ValueError(f"unknown feature tap {tap!r} for this head; the backbone has {', '.join(info)}")
    return int(getattr(info[tap], "channels"))


class OneTapHead:
    """For a head kind whose spec reads one feature map (fields `in_features`, `tap`): `on` and `taps`."""

    in_features: int
    tap: str

    @classmethod
    def on(cls, info: Mapping[str, object], tap: str, **options):
        """The head on a backbone's tap `tap`, its channels read from the backbone's `feature_info`."""
        return cls(channels_of(info, tap), tap, **options)

    @property
    def taps(self) -> dict[str, str]:
        return {"x": self.tap}


class MultiTapHead:
    """For a head kind whose spec reads several maps (fields `in_features`, `feature_taps`, `strides`, then its
    own): `on` and `taps` (roles '0', '1', ...: YOLO's P3, P4, P5)."""

    in_features: tuple[int, ...]
    feature_taps: tuple[str, ...]
    strides: tuple[int, ...]

    @classmethod
    def on(cls, info: Mapping[str, object], taps: Sequence[str], *args, **options):
        """The head on a model's maps `taps`, their channels and strides read from its `feature_info`."""
        taps = tuple(taps)
        return cls(tuple(channels_of(info, tap) for tap in taps), taps,
                   tuple(int(getattr(info[tap], "stride")) for tap in taps), *args, **options)

    @property
    def taps(self) -> dict[str, str]:
        return {str(i): tap for i, tap in enumerate(self.feature_taps)}


from .deeplabv3 import DeepLabV3Spec  # noqa: E402  (head kinds import channels_of and OneTapHead above)
from .fcn import FcnSpec  # noqa: E402
from .lraspp import LrasppSpec  # noqa: E402
from .ssdlite import SsdliteSpec  # noqa: E402
from .yolo_detect import YoloDetectSpec  # noqa: E402
from .yolov5_detect import Yolov5DetectSpec  # noqa: E402

__all__ = ["DeepLabV3Spec", "DenseHeads", "DetectionHead", "FcnSpec", "Head", "LrasppSpec", "MultiTapHead",
           "OneTapHead", "SsdliteSpec", "YoloDetectSpec", "Yolov5DetectSpec", "channels_of", "resize_bilinear"]
