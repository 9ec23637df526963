"""YOLO detectors: ultralytics' YOLOv8 / YOLOv5u / YOLO11, the `yolov5` package's YOLOv5 (v6.0), and the seeds'
MobileNet hybrids (YOLOv5 head on seed 000's MobileNetV3, YOLOv8 head on seed 004's MobileNetV2).

Each model is tables of ultralytics YAML rows (`yolo_rows.resolve_rows` turns them into layers, a neck and the
detection head; comments give ultralytics' module index).  Head rows name the backbone's maps P3/P4/P5, so every
head also sits on any registered backbone's stride8/16/32 taps: `create_model('yolov8n', backbone=
'mobilenet_v3_large')` (the backbone's keys under `model.0.`, as seed 004 puts its MobileNetV2 there; its ImageNet
weights load with `init_from`); a v8/v11/v5 head there gets its family's tail (SPPF, YOLO11's C2PSA) on P5.
BatchNorm is eps 1e-3 / momentum 0.03 everywhere (ultralytics' `initialize_weights`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

from ..registry import model_spec, register
from ..weights import ultralytics_weights
from .mobilenet_v2 import resolve_v2
from .spec import ModelSpec
from .yolo_rows import Scale, resolve_rows

# ultralytics cfg/models/v8/yolov8.yaml
YOLOV8_BACKBONE = (
    (-1, 1, "conv", (64, 3, 2)),  # 0-P1/2
    (-1, 1, "conv", (128, 3, 2)),  # 1-P2/4
    (-1, 3, "c2f", (128, True)),
    (-1, 1, "conv", (256, 3, 2)),  # 3-P3/8
    (-1, 6, "c2f", (256, True)),  # 4 = P3
    (-1, 1, "conv", (512, 3, 2)),  # 5-P4/16
    (-1, 6, "c2f", (512, True)),  # 6 = P4
    (-1, 1, "conv", (1024, 3, 2)),  # 7-P5/32
    (-1, 3, "c2f", (1024, True)),
)
YOLOV8_TAIL = ((-1, 1, "sppf", (1024, 5)),)  # 9 = P5
YOLOV8_HEAD = (  # head-row indices (ultralytics' index = head row + 10 in yolov8n)
    (-1, 1, "upsample", ()),  # 0
    ((-1, "P4"), 1, "concat", ()),  # 1
    (-1, 3, "c2f", (512,)),  # 2
    (-1, 1, "upsample", ()),  # 3
    ((-1, "P3"), 1, "concat", ()),  # 4
    (-1, 3, "c2f", (256,)),  # 5 (P3/8-small)
    (-1, 1, "conv", (256, 3, 2)),  # 6
    ((-1, 2), 1, "concat", ()),  # 7
    (-1, 3, "c2f", (512,)),  # 8 (P4/16-medium)
    (-1, 1, "conv", (512, 3, 2)),  # 9
    ((-1, "P5"), 1, "concat", ()),  # 10
    (-1, 3, "c2f", (1024,)),  # 11 (P5/32-large)
    ((5, 8, 11), 1, "detect", ()),
)
# ultralytics cfg/models/v5/yolov5.yaml and the yolov5 package's models/yolov5*.yaml (v6.0): the same rows
YOLOV5_BACKBONE = (
    (-1, 1, "conv", (64, 6, 2, 2)),  # 0-P1/2
    (-1, 1, "conv", (128, 3, 2)),  # 1-P2/4
    (-1, 3, "c3", (128,)),
    (-1, 1, "conv", (256, 3, 2)),  # 3-P3/8
    (-1, 6, "c3", (256,)),  # 4 = P3
    (-1, 1, "conv", (512, 3, 2)),  # 5-P4/16
    (-1, 9, "c3", (512,)),  # 6 = P4
    (-1, 1, "conv", (1024, 3, 2)),  # 7-P5/32
    (-1, 3, "c3", (1024,)),
)
YOLOV5_TAIL = ((-1, 1, "sppf", (1024, 5)),)  # 9 = P5


def yolov5_head(widths: tuple[int, ...], repeats: int = 3, detect: str = "detect") -> tuple:
    """YOLOv5 v6.0's head rows (ultralytics' index = head row + 10 in yolov5n); widths of its Conv/C3 rows in
    order (the official YAML: 512, 512, 256, 256, 256, 512, 512, 1024)."""
    w = widths
    return (
        (-1, 1, "conv", (w[0], 1, 1)),  # 0
        (-1, 1, "upsample", ()),  # 1
        ((-1, "P4"), 1, "concat", ()),  # 2
        (-1, repeats, "c3", (w[1], False)),  # 3
        (-1, 1, "conv", (w[2], 1, 1)),  # 4
        (-1, 1, "upsample", ()),  # 5
        ((-1, "P3"), 1, "concat", ()),  # 6
        (-1, repeats, "c3", (w[3], False)),  # 7 (P3/8-small)
        (-1, 1, "conv", (w[4], 3, 2)),  # 8
        ((-1, 4), 1, "concat", ()),  # 9
        (-1, repeats, "c3", (w[5], False)),  # 10 (P4/16-medium)
        (-1, 1, "conv", (w[6], 3, 2)),  # 11
        ((-1, 0), 1, "concat", ()),  # 12
        (-1, repeats, "c3", (w[7], False)),  # 13 (P5/32-large)
        ((7, 10, 13), 1, detect, ()),
    )


YOLOV5_WIDTHS = (512, 512, 256, 256, 256, 512, 512, 1024)
# ultralytics cfg/models/11/yolo11.yaml
YOLO11_BACKBONE = (
    (-1, 1, "conv", (64, 3, 2)),  # 0-P1/2
    (-1, 1, "conv", (128, 3, 2)),  # 1-P2/4
    (-1, 2, "c3k2", (256, False, 0.25)),
    (-1, 1, "conv", (256, 3, 2)),  # 3-P3/8
    (-1, 2, "c3k2", (512, False, 0.25)),  # 4 = P3
    (-1, 1, "conv", (512, 3, 2)),  # 5-P4/16
    (-1, 2, "c3k2", (512, True)),  # 6 = P4
    (-1, 1, "conv", (1024, 3, 2)),  # 7-P5/32
    (-1, 2, "c3k2", (1024, True)),
)
YOLO11_TAIL = ((-1, 1, "sppf", (1024, 5)), (-1, 2, "c2psa", (1024,)))  # 9, 10 = P5
YOLO11_HEAD = (  # ultralytics' index = head row + 11
    (-1, 1, "upsample", ()),  # 0
    ((-1, "P4"), 1, "concat", ()),  # 1
    (-1, 2, "c3k2", (512, False)),  # 2
    (-1, 1, "upsample", ()),  # 3
    ((-1, "P3"), 1, "concat", ()),  # 4
    (-1, 2, "c3k2", (256, False)),  # 5 (P3/8-small)
    (-1, 1, "conv", (256, 3, 2)),  # 6
    ((-1, 2), 1, "concat", ()),  # 7
    (-1, 2, "c3k2", (512, False)),  # 8 (P4/16-medium)
    (-1, 1, "conv", (512, 3, 2)),  # 9
    ((-1, "P5"), 1, "concat", ()),  # 10
    (-1, 2, "c3k2", (1024, True)),  # 11 (P5/32-large)
    ((5, 8, 11), 1, "detect", ()),
)
# Seed 000: MobileNetV3 rows [out, hidden, kernel, stride, SE, hard-swish] under conv_bn_hswish [out, stride]
SEED000_SMALL_BACKBONE = (
    (-1, 1, "conv_bn_hswish", (16, 2)),  # 0-p1/2
    (-1, 1, "mobilenet_v3", (16, 16, 3, 2, 1, 0)),  # 1-p2/4
    (-1, 1, "mobilenet_v3", (24, 72, 3, 2, 0, 0)),  # 2-p3/8
    (-1, 1, "mobilenet_v3", (24, 88, 3, 1, 0, 0)),  # 3 = P3
    (-1, 1, "mobilenet_v3", (40, 96, 5, 2, 1, 1)),  # 4-p4/16
    (-1, 1, "mobilenet_v3", (40, 240, 5, 1, 1, 1)),
    (-1, 1, "mobilenet_v3", (40, 240, 5, 1, 1, 1)),
    (-1, 1, "mobilenet_v3", (48, 120, 5, 1, 1, 1)),
    (-1, 1, "mobilenet_v3", (48, 144, 5, 1, 1, 1)),  # 8 = P4
    (-1, 1, "mobilenet_v3", (96, 288, 5, 2, 1, 1)),  # 9-p5/32
    (-1, 1, "mobilenet_v3", (96, 576, 5, 1, 1, 1)),
    (-1, 1, "mobilenet_v3", (96, 576, 5, 1, 1, 1)),  # 11 = P5
)
SEED000_LARGE_BACKBONE = (
    (-1, 1, "conv_bn_hswish", (16, 2)),  # 0-p1/2
    (-1, 1, "mobilenet_v3", (16, 16, 3, 1, 0, 0)),
    (-1, 1, "mobilenet_v3", (24, 64, 3, 2, 0, 0)),  # 2-p2/4
    (-1, 1, "mobilenet_v3", (24, 72, 3, 1, 0, 0)),
    (-1, 1, "mobilenet_v3", (40, 72, 5, 2, 1, 0)),  # 4-p3/8
    (-1, 1, "mobilenet_v3", (40, 120, 5, 1, 1, 0)),
    (-1, 1, "mobilenet_v3", (40, 120, 5, 1, 1, 0)),  # 6 = P3
    (-1, 1, "mobilenet_v3", (80, 240, 3, 2, 0, 1)),  # 7-p4/16
    (-1, 1, "mobilenet_v3", (80, 200, 3, 1, 0, 1)),
    (-1, 1, "mobilenet_v3", (80, 184, 3, 1, 0, 1)),
    (-1, 1, "mobilenet_v3", (80, 184, 3, 1, 0, 1)),
    (-1, 1, "mobilenet_v3", (112, 480, 3, 1, 1, 1)),
    (-1, 1, "mobilenet_v3", (112, 672, 3, 1, 1, 1)),
    (-1, 1, "mobilenet_v3", (160, 672, 5, 1, 1, 1)),  # 13 = P4 (the seed moves the stride-2 to block 14)
    (-1, 1, "mobilenet_v3", (160, 960, 5, 2, 1, 1)),  # 14-p5/32
    (-1, 1, "mobilenet_v3", (160, 960, 5, 1, 1, 1)),  # 15 = P5
)
SEED000_SMALL_HEAD = yolov5_head((96, 144, 144, 168, 168, 312, 312, 408), repeats=3, detect="detect_anchors")
SEED000_LARGE_HEAD = yolov5_head((256, 256, 128, 128, 128, 256, 256, 512), repeats=1, detect="detect_anchors")

N, S = Scale(0.33, 0.25, 1024), Scale(0.33, 0.50, 1024)
YOLO11_N = Scale(0.50, 0.25, 1024)
FAMILIES = {  # backbone rows, tail, head, index of P3 and P4 in the backbone rows, Detect's class branch
    "yolov8": (YOLOV8_BACKBONE, YOLOV8_TAIL, YOLOV8_HEAD, dict(P3=4, P4=6), "legacy"),
    "yolov5u": (YOLOV5_BACKBONE, YOLOV5_TAIL, yolov5_head(YOLOV5_WIDTHS), dict(P3=4, P4=6), "legacy"),
    "yolov5": (YOLOV5_BACKBONE, YOLOV5_TAIL, yolov5_head(YOLOV5_WIDTHS, detect="detect_anchors"), dict(P3=4, P4=6),
               "legacy"),
    "yolo11": (YOLO11_BACKBONE, YOLO11_TAIL, YOLO11_HEAD, dict(P3=4, P4=6), "yolo11"),
    "seed000_small": (SEED000_SMALL_BACKBONE, (), SEED000_SMALL_HEAD, dict(P3=3, P4=8), "legacy"),
    "seed000_large": (SEED000_LARGE_BACKBONE, (), SEED000_LARGE_HEAD, dict(P3=6, P4=13), "legacy"),
}
SCALES = {"n": N, "s": S}


def _external_backbone(name: str) -> ModelSpec:
    """A registered backbone's spec for a YOLO head (its classifier's layers; the head reads stride8/16/32)."""
    spec = model_spec(name)
    if spec.task != "classification":
        raise ValueError(f"backbone={name!r}: a YOLO head sits on a classifier's layers (e.g. mobilenet_v3_large, "
                         f"mobilenetv4_conv_small), not on a {spec.task} model")
    return spec


def resolve_yolo(source: str, family: str, scale: Any = Scale(), backbone: Optional[str] = None,
                 anchors: Optional[tuple] = None) -> ModelSpec:
    """A YOLO family's tables at `scale` ('n', 's' or a `Scale`), on its own backbone or on the registered
    `backbone`'s stride8/16/32 taps (then the family's tail runs on P5 as neck nodes)."""
    rows, tail, head, levels, branch = FAMILIES[family]
    scale = SCALES[scale] if isinstance(scale, str) else scale
    anchors = tuple(tuple(tuple(a) for a in level) for level in anchors) if anchors is not None else None
    options = dict(class_branch=branch, anchors=anchors)
    if backbone is None:
        return resolve_rows(rows, tail, head, scale, levels, **options)
    return resolve_rows(rows, tail, head, scale, external=_external_backbone(backbone), **options)


def seed004_mobilenet_v2() -> ModelSpec:
    """Seed 004's MobileNetV2 feature list: torchvision's `features[:18]` (no final 1x1 conv) as the seed's own
    modules name them (`model.J`: J = 0 the stem ConvNormReLUBlock, 1..17 InverseResidualBlocks)."""
    spec = resolve_v2("torchvision")
    layers = []
    for index, layer in enumerate(spec.layers[:18]):
        block = layer.block
        if index == 0:
            block = dataclasses.replace(block, torch_names=("conv", "bn"))
        else:
            block = dataclasses.replace(block, torch_layout="seed004_v2")
        layers.append(dataclasses.replace(layer, block=block, torch_prefix=f"model.{index}"))
    return dataclasses.replace(spec, layers=tuple(layers))


def resolve_seed004(source: str, scale: str = "n") -> ModelSpec:
    """Seed 004: YOLOv8's SPPF (`model.1`) and head (`model.2..14`) on the seed's MobileNetV2 (`model.0`)."""
    _, tail, head, _, branch = FAMILIES["yolov8"]
    return resolve_rows((), tail, head, SCALES[scale], external=seed004_mobilenet_v2(), class_branch=branch)


def _register(name: str, resolve, defaults: dict, reference: str, labels: str = "coco80") -> None:
    register(name, resolve, dict(num_classes=80, **defaults), "ultralytics", ultralytics_weights(reference,
                                                                                                   labels=labels))


ANY_BACKBONE = dict(backbone=None)
_register("yolov8n", functools.partial(resolve_yolo, family="yolov8", scale="n"), ANY_BACKBONE,
          "ultralytics DetectionModel('yolov8n.yaml')")
_register("yolov8s", functools.partial(resolve_yolo, family="yolov8", scale="s"), ANY_BACKBONE,
          "ultralytics DetectionModel('yolov8s.yaml')")
_register("yolov5nu", functools.partial(resolve_yolo, family="yolov5u", scale="n"), ANY_BACKBONE,
          "ultralytics DetectionModel('yolov5nu.yaml'): YOLOv5n with the anchor-free head")
_register("yolo11n", functools.partial(resolve_yolo, family="yolo11", scale=YOLO11_N), ANY_BACKBONE,
          "ultralytics DetectionModel('yolo11n.yaml')")
_register("yolov5n", functools.partial(resolve_yolo, family="yolov5", scale="n"), dict(ANY_BACKBONE, anchors=None),
          "yolov5 7.0 Model('yolov5n.yaml') (anchor-based)")
_register("yolov5_mobilenet_v3_small", functools.partial(resolve_yolo, family="seed000_small"), dict(anchors=None),
          "seed 000: YOLOv5 v6.0 head on MobileNetV3-Small (no published weights)")
register("yolov5_mobilenet_v3_large", functools.partial(resolve_yolo, family="seed000_large"),
         dict(num_classes=20, anchors=None), "ultralytics",
         ultralytics_weights("seed 000: YOLOv5 v6.0 head on MobileNetV3-Large, 20 VOC classes (no published weights)",
                             labels="voc20"))
_register("yolov8n_mobilenet_v2", functools.partial(resolve_seed004, scale="n"), {},
          "seed 004: YOLOv8n head on MobileNetV2 (no published weights)")
_register("yolov8s_mobilenet_v2", functools.partial(resolve_seed004, scale="s"), {},
          "seed 004: YOLOv8s head on MobileNetV2 (no published weights)")
