"""MobileNetV3 Large/Small (torchvision `mobilenet_v3_*`, timm `mobilenetv3_*_100`): tables, resolver, entries."""
from __future__ import annotations

import functools
from typing import NamedTuple

from ..blocks.conv_norm_act import ConvNormActSpec
from ..blocks.inverted_residual import InvertedResidualSpec
from ..layers.ops import make_divisible
from ..registry import register
from ..weights import timm_weights, torchvision_weights
from .spec import ClassifierSpec, Layer, ModelSpec


class V3Row(NamedTuple):
    kernel: int
    expanded: int
    out: int
    se: bool
    act: str
    stride: int
    stage: int  # timm groups blocks by stage in its checkpoint keys
    tail: bool = False  # the C4 stage, which `reduced_tail` halves and `dilated` dilates instead of striding


RE, HS = "relu", "hard_swish"
MOBILENET_V3_LARGE = (
    V3Row(3, 16, 16, False, RE, 1, 0),
    V3Row(3, 64, 24, False, RE, 2, 1),
    V3Row(3, 72, 24, False, RE, 1, 1),
    V3Row(5, 72, 40, True, RE, 2, 2),
    V3Row(5, 120, 40, True, RE, 1, 2),
    V3Row(5, 120, 40, True, RE, 1, 2),
    V3Row(3, 240, 80, False, HS, 2, 3),
    V3Row(3, 200, 80, False, HS, 1, 3),
    V3Row(3, 184, 80, False, HS, 1, 3),
    V3Row(3, 184, 80, False, HS, 1, 3),
    V3Row(3, 480, 112, True, HS, 1, 4),
    V3Row(3, 672, 112, True, HS, 1, 4),
    V3Row(5, 672, 160, True, HS, 2, 5, tail=True),
    V3Row(5, 960, 160, True, HS, 1, 5, tail=True),
    V3Row(5, 960, 160, True, HS, 1, 5, tail=True),
)
MOBILENET_V3_SMALL = (
    V3Row(3, 16, 16, True, RE, 2, 0),
    V3Row(3, 72, 24, False, RE, 2, 1),
    V3Row(3, 88, 24, False, RE, 1, 1),
    V3Row(5, 96, 40, True, HS, 2, 2),
    V3Row(5, 240, 40, True, HS, 1, 2),
    V3Row(5, 240, 40, True, HS, 1, 2),
    V3Row(5, 120, 48, True, HS, 1, 3),
    V3Row(5, 144, 48, True, HS, 1, 3),
    V3Row(5, 288, 96, True, HS, 2, 4, tail=True),
    V3Row(5, 576, 96, True, HS, 1, 4, tail=True),
    V3Row(5, 576, 96, True, HS, 1, 4, tail=True),
)


def resolve_v3(rows: tuple[V3Row, ...], hidden: int, source: str, width_mult: float = 1.0,
               reduced_tail: bool = False, dilated: bool = False, bn_eps: float = 1e-3,
               bn_momentum: float = 0.01) -> ModelSpec:
    timm = source == "timm"
    divider = 2 if reduced_tail else 1

    def adjust(channels: int) -> int:
        return make_divisible(channels * width_mult)

    stem = adjust(16)
    layers = [Layer(ConvNormActSpec(3, stem, 3, 2, HS, ("conv_stem", "bn1") if timm else ("0", "1")),
                    "" if timm else "features.0")]
    in_features, in_reduced, stage_start = stem, False, {}
    for index, row in enumerate(rows):
        out = adjust(row.out // divider if row.tail else row.out)
        # The tail's expansions shrink with it, except the first, which still sees full-width input.
        expanded = adjust(row.expanded // divider if in_reduced else row.expanded)
        dilation = 2 if (dilated and row.tail) else 1
        block = InvertedResidualSpec(in_features, expanded, out, row.kernel, 1 if dilation > 1 else row.stride,
                                     dilation, row.act, make_divisible(expanded // 4) if row.se else 0, None,
                                     row.stride == 1 and in_features == out, "timm" if timm else "torchvision_v3")
        stage_start.setdefault(row.stage, index)
        layers.append(Layer(block, f"blocks.{row.stage}.{index - stage_start[row.stage]}" if timm
                            else f"features.{len(layers)}"))
        in_features, in_reduced = out, row.tail
    head = 6 * in_features
    # timm's final 1x1 ConvBnAct is a stage of its own; its hidden layer is a 1x1 conv with bias.
    layers.append(Layer(ConvNormActSpec(in_features, head, 1, 1, HS, ("conv", "bn1") if timm else ("0", "1")),
                        f"blocks.{rows[-1].stage + 1}.0" if timm else f"features.{len(layers)}"))
    classifier = ClassifierSpec(adjust(hidden // divider), HS, hidden_key="conv_head" if timm else "classifier.0",
                                hidden_key_is_conv=timm, classifier_key="classifier" if timm else "classifier.3")
    return ModelSpec(source, tuple(layers), classifier, bn_eps, bn_momentum)


V3_VARIANTS = tuple(dict(width_mult=w, reduced_tail=r) for w in (0.75, 1.0) for r in (False, True))
TORCHVISION_V3 = dict(width_mult=1.0, reduced_tail=False, dilated=False, dropout=0.2, bn_eps=1e-3, bn_momentum=0.01)
TIMM_V3 = dict(width_mult=1.0, dropout=0.0, bn_eps=1e-5, bn_momentum=0.1)
resolve_v3_large = functools.partial(resolve_v3, MOBILENET_V3_LARGE, 1280)
resolve_v3_small = functools.partial(resolve_v3, MOBILENET_V3_SMALL, 1024)

register("mobilenet_v3_large", resolve_v3_large, TORCHVISION_V3, "torchvision",
         torchvision_weights("torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2", resize_size=232),
         variants=V3_VARIANTS)
register("mobilenet_v3_small", resolve_v3_small, TORCHVISION_V3, "torchvision",
         torchvision_weights("torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1"), variants=V3_VARIANTS)
register("mobilenetv3_large_100", resolve_v3_large, TIMM_V3, "timm",
         timm_weights("timm mobilenetv3_large_100.ra_in1k"), fixed=("width_mult",))
register("mobilenetv3_small_100", resolve_v3_small, TIMM_V3, "timm",
         timm_weights("timm mobilenetv3_small_100.lamb_in1k"), fixed=("width_mult",))
