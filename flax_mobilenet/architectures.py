"""Architecture tables and the one function per table format that resolves rows into blocks.

A table row is what the papers (and torchvision/timm) write down; `resolve_*` applies the
width multiplier, reduced tail and dilation, and yields `ModelSpec`: every layer with its
exact channel counts.  Both the Flax builder and the weight converter read `ModelSpec`, so
they cannot disagree about the architecture.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

from .layers import make_divisible


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    in_features: int
    expanded_features: int
    out_features: int
    kernel_size: int
    stride: int  # stride applied by the depthwise conv (1 where dilation replaces it)
    dilation: int
    activation: str
    se_features: int  # 0 = no squeeze-excite
    project_activation: Optional[str]
    residual: bool
    stage: int  # timm groups blocks by stage in its checkpoint keys


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    family: str  # 'v1' | 'v2' | 'v3': selects the PyTorch key layouts
    stem_features: int
    stem_activation: str
    blocks: tuple[BlockSpec, ...]
    head_features: int  # final 1x1 conv-BN-act; 0 = none (V1)
    head_activation: Optional[str]
    hidden_features: int  # V3's pre-logits linear layer; 0 = none
    hidden_activation: Optional[str]
    bn_eps: float
    bn_momentum: float  # PyTorch convention

    @property
    def num_features(self) -> int:
        """Width of the pooled features that feed the classifier."""
        if self.hidden_features:
            return self.hidden_features
        return self.head_features or self.blocks[-1].out_features


class FeatureInfo(NamedTuple):
    """A feature map the backbone can return: `name` is a key of `feature_taps`."""

    name: str
    layer: int  # index in torchvision's `features` Sequential
    stride: int  # input pixels per output pixel
    channels: int


def feature_info(spec: ModelSpec) -> dict[str, FeatureInfo]:
    """Every tappable layer output as 'features.N', plus 'strideS' for the last layer at each stride."""
    channels = [spec.stem_features] + [b.out_features for b in spec.blocks]
    strides = [2]
    for block in spec.blocks:
        strides.append(strides[-1] * block.stride)
    if spec.head_features:
        channels.append(spec.head_features)
        strides.append(strides[-1])
    taps = {f"features.{i}": FeatureInfo(f"features.{i}", i, s, c) for i, (s, c) in enumerate(zip(strides, channels))}
    for info in list(taps.values()):
        taps[f"stride{info.stride}"] = info._replace(name=f"stride{info.stride}")  # later layers win
    return taps


# --- MobileNetV1 (timm `mobilenetv1_100`): rows of (out_channels, repeats, first_stride) -------------
MOBILENET_V1 = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))


def resolve_v1(rows=MOBILENET_V1, width_mult: float = 1.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
               activation: str = "relu6") -> ModelSpec:
    stem = make_divisible(32 * width_mult)
    blocks, in_features = [], stem
    for stage, (out, repeats, first_stride) in enumerate(rows):
        out = make_divisible(out * width_mult)
        for i in range(repeats):
            blocks.append(BlockSpec(in_features, in_features, out, 3, first_stride if i == 0 else 1, 1, activation,
                                    0, activation, False, stage))
            in_features = out
    return ModelSpec("v1", stem, activation, tuple(blocks), 0, None, 0, None, bn_eps, bn_momentum)


# --- MobileNetV2 (torchvision): rows of (expand_ratio, out_channels, repeats, first_stride) ----------
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


def resolve_v2(rows=MOBILENET_V2, width_mult: float = 1.0, bn_eps: float = 1e-5,
               bn_momentum: float = 0.1) -> ModelSpec:
    stem = make_divisible(32 * width_mult)
    blocks, in_features = [], stem
    for stage, (ratio, out, repeats, first_stride) in enumerate(rows):
        out = make_divisible(out * width_mult)
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            hidden = int(round(in_features * ratio))  # no divisor rounding, as torchvision
            blocks.append(BlockSpec(in_features, hidden, out, 3, stride, 1, "relu6", 0, None,
                                    stride == 1 and in_features == out, stage))
            in_features = out
    head = make_divisible(1280 * max(1.0, width_mult))
    return ModelSpec("v2", stem, "relu6", tuple(blocks), head, "relu6", 0, None, bn_eps, bn_momentum)


# --- MobileNetV3 (torchvision): rows of
# (kernel, expanded, out, squeeze_excite, activation, stride, timm_stage, in_tail).  The tail (C4 stage)
# is what `reduced_tail` halves and `dilated` dilates instead of striding.
class V3Row(NamedTuple):
    kernel: int
    expanded: int
    out: int
    se: bool
    act: str
    stride: int
    stage: int
    tail: bool = False


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


def resolve_v3(rows: tuple[V3Row, ...], hidden: int, width_mult: float = 1.0, reduced_tail: bool = False,
               dilated: bool = False, bn_eps: float = 1e-3, bn_momentum: float = 0.01) -> ModelSpec:
    divider = 2 if reduced_tail else 1

    def adjust(channels: int) -> int:
        return make_divisible(channels * width_mult)

    stem = adjust(16)
    blocks, in_features, in_reduced = [], stem, False
    for row in rows:
        out = adjust(row.out // divider if row.tail else row.out)
        # The tail's expansions shrink with it, except the first, which still sees full-width input.
        expanded = adjust(row.expanded // divider if in_reduced else row.expanded)
        dilation = 2 if (dilated and row.tail) else 1
        blocks.append(BlockSpec(
            in_features, expanded, out, row.kernel, 1 if dilation > 1 else row.stride, dilation, row.act,
            make_divisible(expanded // 4) if row.se else 0, None,
            row.stride == 1 and in_features == out, row.stage))
        in_features, in_reduced = out, row.tail
    head = 6 * in_features
    return ModelSpec("v3", stem, HS, tuple(blocks), head, HS, adjust(hidden // divider), HS, bn_eps, bn_momentum)
