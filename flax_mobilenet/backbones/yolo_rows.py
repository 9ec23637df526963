"""ultralytics-style model rows (`[from, repeats, module, args]`, as its YAMLs write them) -> a `ModelSpec`.

A YOLO model is three tables: a backbone (a chain of rows; or any registered backbone), its tail (the rows after
the P5 stage: SPPF, YOLO11's C2PSA) and a head (a small graph: upsample, concat, blocks, ending in a detect row).
Head rows name their inputs by -1 (the row before), an index of an earlier head row (0 = the first head row), or
'P3' / 'P4' / 'P5' (the backbone's stride-8/16/32 maps; P5 is the tail's output).  `resolve_rows` turns the
tables into layers `features_N` (the chain), neck nodes `neck.I` (tail on another backbone, then the head rows)
and the detection head, with PyTorch keys `model.I.*` numbered as ultralytics numbers its modules.

Scaling as ultralytics' `parse_model`: channels c2 -> ceil(min(c2, max_channels) * width / 8) * 8, repeats n > 1 ->
max(round(n * depth), 1), passed into the CSP blocks (C3, C2f, C3k2, C2PSA).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ..blocks.csp import C2fSpec, C3k2Spec, C3Spec
from ..blocks.psa import C2psaSpec
from ..blocks.seed_mobilenet_v3 import SeedMobileNetV3Spec
from ..blocks.sppf import SppfSpec
from ..blocks.yolo_conv import YoloConvSpec, conv_bn_hswish_spec
from ..heads import DenseHeads, YoloDetectSpec, Yolov5DetectSpec
from .spec import Layer, ModelSpec, NeckNode, feature_info

Source = Union[int, str, tuple]
Row = tuple[Source, int, str, tuple]  # (from, repeats, kind, args) as in the YAMLs
LEVELS = ("P3", "P4", "P5")
YOLO_BN = dict(bn_eps=1e-3, bn_momentum=0.03)  # ultralytics' initialize_weights sets these on every BatchNorm


@dataclasses.dataclass(frozen=True)
class Scale:
    """A YAML scale: depth (repeats), width (channels) and the channel cap before the width."""

    depth: float = 1.0
    width: float = 1.0
    max_channels: int = 1 << 30

    def channels(self, c2: int) -> int:
        return math.ceil(min(c2, self.max_channels) * self.width / 8) * 8

    def repeats(self, n: int) -> int:
        return max(round(n * self.depth), 1) if n > 1 else n


# kind -> (c_in, c_out after scaling, repeats after scaling, the YAML args after c2) -> block spec
BLOCKS: dict[str, Callable[..., Any]] = {
    "conv": lambda c1, c2, n, k=1, s=1, p=None: YoloConvSpec(c1, c2, k, s, padding=p),
    "c3": lambda c1, c2, n, shortcut=True: C3Spec(c1, c2, n, shortcut),
    "c2f": lambda c1, c2, n, shortcut=False: C2fSpec(c1, c2, n, shortcut),
    "c3k2": lambda c1, c2, n, c3k=False, e=0.5: C3k2Spec(c1, c2, n, c3k, e),
    "sppf": lambda c1, c2, n, k=5: SppfSpec(c1, c2, k),
    "c2psa": lambda c1, c2, n: C2psaSpec(c1, c2, n),
    "conv_bn_hswish": lambda c1, c2, n, s: conv_bn_hswish_spec(c1, c2, s),  # seed 000
    "mobilenet_v3": lambda c1, c2, n, hidden, k, s, se, hs: SeedMobileNetV3Spec(c1, c2, hidden, k, s, bool(se),
                                                                              bool(hs)),
}
REPEATED_INSIDE = ("c3", "c2f", "c3k2", "c2psa")  # kinds that take the repeats as an argument
OPS = ("upsample", "concat")
DETECT_KINDS = ("detect", "detect_anchors")  # ultralytics' anchor-free Detect; yolov5's anchor-based Detect


def _block(kind: str, c1: int, row: Row, scale: Scale) -> Any:
    _, repeats, _, args = row
    if kind not in BLOCKS:
        raise ValueError(f"unknown YOLO row kind {kind!r}; known: {', '.join([*BLOCKS, *OPS, *DETECT_KINDS])}")
    repeats = scale.repeats(repeats)
    if repeats > 1 and kind not in REPEATED_INSIDE:
        raise ValueError(f"a {kind} row repeats only once here, got {repeats}")
    return BLOCKS[kind](c1, scale.channels(args[0]), repeats, *args[1:])


def resolve_rows(backbone: Sequence[Row], tail: Sequence[Row], head: Sequence[Row], scale: Scale,
                 levels: Optional[Mapping[str, int]] = None, external: Optional[ModelSpec] = None,
                 external_prefix: Callable[[str], str] = lambda prefix: f"model.0.{prefix}",
                 class_branch: str = "legacy", anchors: Optional[tuple] = None) -> ModelSpec:
    """The model of the tables.  Own backbone: `backbone` + `tail` rows are the chain (`model.0..`), `levels`
    gives the YAML index of P3 and P4 (P5 is the tail's last row).  `external`: another backbone's resolved
    spec (its taps stride8/16/32 are P3-P5; its keys re-prefixed by `external_prefix`, ultralytics' `model.0`),
    then the tail rows as neck nodes (`model.1..`) on its P5.  `anchors` (pixels per level) picks yolov5's
    anchor-based head for a 'detect_anchors' row."""
    layers: list[Layer] = []
    if external is None:
        channels = 3
        for index, row in enumerate((*backbone, *tail)):
            source, _, kind, _ = row
            if source != -1:
                raise ValueError(f"backbone row {index} reads {source}: a backbone is a chain (-1)")
            block = _block(kind, channels, row, scale)
            layers.append(Layer(block, f"model.{index}"))
            channels = block.out_features
        taps = {level: f"features.{levels[level]}" for level in LEVELS[:2]}
        taps["P5"] = f"features.{len(layers) - 1}"
        spec = ModelSpec("ultralytics", tuple(layers), None, **YOLO_BN)
        first, rows = len(layers), tuple(head)
    else:
        layers = [dataclasses.replace(layer, torch_prefix=external_prefix(layer.torch_prefix))
                  for layer in external.layers]
        spec = ModelSpec("ultralytics", tuple(layers), None, **YOLO_BN)
        info = feature_info(spec)
        last = info["stride32"].layer  # layers past the P5 stage (a classifier's final 1x1 conv) are not used
        spec = dataclasses.replace(spec, layers=spec.layers[: last + 1])
        taps = {level: f"stride{8 << i}" for i, level in enumerate(LEVELS)}
        # the tail on P5, its rows first among the head's (so they are model.1..), P5 then names its output
        tail_rows = tuple(((-1 if i else "P5"), n, kind, args) for i, (_, n, kind, args) in enumerate(tail))
        rows = tail_rows + tuple(_shift(row, len(tail)) for row in head)
        first = 1
    nodes: list[NeckNode] = []
    names: list[str] = []  # the feature name of each head row
    info = feature_info(spec)

    def name_of(source: Source, row_index: int) -> str:
        if source == -1:
            return names[row_index - 1] if row_index else taps["P5"]
        if isinstance(source, str):
            return taps[source]
        return names[source]

    for row_index, row in enumerate(rows):
        source, _, kind, args = row
        sources = source if isinstance(source, tuple) else (source,)
        inputs = tuple(name_of(s, row_index) for s in sources)
        prefix = f"model.{first + row_index}"
        if kind in DETECT_KINDS:
            head_spec = (Yolov5DetectSpec.on(info, inputs, prefix, **({"anchors": anchors} if anchors else {}))
                         if kind == "detect_anchors"
                         else YoloDetectSpec.on(info, inputs, prefix, class_branch=class_branch))
            return dataclasses.replace(spec, neck=tuple(nodes), head=DenseHeads((("out", head_spec),)))
        if kind in OPS:
            node = NeckNode(kind, inputs)
        else:
            node = NeckNode("block", inputs, prefix, _block(kind, info[inputs[0]].channels, row, scale))
        nodes.append(node)
        spec = dataclasses.replace(spec, neck=tuple(nodes))
        info = feature_info(spec)
        names.append(f"neck.{len(nodes) - 1}")
        if external is not None and tail and row_index == len(tail) - 1:
            taps["P5"] = names[-1]  # the head reads the tail's output as P5
    raise ValueError("YOLO head rows must end with a detect row")


def _shift(row: Row, offset: int) -> Row:
    """A head row with its head-row indices moved by `offset` (rows inserted before it)."""
    source, repeats, kind, args = row
    shift = lambda s: s + offset if isinstance(s, int) and s >= 0 else s  # noqa: E731
    return (tuple(shift(s) for s in source) if isinstance(source, tuple) else shift(source), repeats, kind, args)
