"""MobileViT v1 (timm `mobilevit_xxs|xs|s`) and v2 (`mobilevitv2_050`..`_200`) on timm's ByobNet: tables,
resolver, registry entries.

stem (3x3 s2 conv-BN-SiLU) -> five stages of inverted-residual 'bottle' blocks (byobnet's
BottleneckBlock with bottle_in/linear_out: expand 1x1, depthwise 3x3, linear 1x1 projection, a
residual only where shapes allow, as timm builds them with downsample='') with a MobileViT block
closing stages 3-5 -> final 1x1 conv-BN-SiLU -> average pool -> head.fc.
timm's feature levels are stages.0 (stride 2), stages.1..3 and final_conv (stride 32), which is
what `feature_info`'s last layer per stride gives here.  v2 uses MobileViT-v2 blocks (linear
attention, no fusion), widths scaled by its multiplier, and no final conv (stride 32 = stages.4).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

from ..blocks.conv_norm_act import ConvNormActSpec
from ..blocks.inverted_residual import InvertedResidualSpec
from ..blocks.mobilevit_block import MobileVitBlockSpec, MobileVitV2BlockSpec
from ..layers.ops import make_divisible
from ..registry import register
from ..weights import timm_weights
from .spec import ClassifierSpec, Layer, ModelSpec


class Stage(NamedTuple):
    """One of timm's model_cfgs stages: `depth` bottle blocks, then a MobileViT block if `transformer_dim`."""

    depth: int
    out: int
    stride: int
    bottle_ratio: float
    transformer_dim: int = 0
    transformer_depth: int = 0


class MobileVitConfig(NamedTuple):
    stem: int
    stages: tuple[Stage, ...]
    num_features: int  # the final 1x1 conv's width; 0 = none (v2)
    version: int = 1


# timm/models/mobilevit.py model_cfgs (patch size 2, 4 heads, MLP ratio 2 throughout).
MOBILEVIT = {
    "mobilevit_xxs": MobileVitConfig(16, (Stage(1, 16, 1, 2.0), Stage(3, 24, 2, 2.0), Stage(1, 48, 2, 2.0, 64, 2),
                                          Stage(1, 64, 2, 2.0, 80, 4), Stage(1, 80, 2, 2.0, 96, 3)), 320),
    "mobilevit_xs": MobileVitConfig(16, (Stage(1, 32, 1, 4.0), Stage(3, 48, 2, 4.0), Stage(1, 64, 2, 4.0, 96, 2),
                                         Stage(1, 80, 2, 4.0, 120, 4), Stage(1, 96, 2, 4.0, 144, 3)), 384),
    "mobilevit_s": MobileVitConfig(16, (Stage(1, 32, 1, 4.0), Stage(3, 64, 2, 4.0), Stage(1, 96, 2, 4.0, 144, 2),
                                        Stage(1, 128, 2, 4.0, 192, 4), Stage(1, 160, 2, 4.0, 240, 3)), 640),
}
ACT = "silu"
V2_MULTIPLIERS = {"050": 0.5, "075": 0.75, "100": 1.0, "125": 1.25, "150": 1.5, "175": 1.75, "200": 2.0}


def mobilevit_v2_config(multiplier: float) -> MobileVitConfig:
    """timm's `_mobilevitv2_cfg`: widths int(c * multiplier); attention width half the block's input."""
    c = [int(width * multiplier) for width in (64, 128, 256, 384, 512)]
    return MobileVitConfig(int(32 * multiplier), (
        Stage(1, c[0], 1, 2.0), Stage(2, c[1], 2, 2.0),
        *(Stage(1, c[i], 2, 2.0, make_divisible(0.5 * c[i]), depth) for i, depth in ((2, 2), (3, 4), (4, 3)))),
        num_features=0, version=2)


MOBILEVIT.update({f"mobilevitv2_{suffix}": mobilevit_v2_config(m) for suffix, m in V2_MULTIPLIERS.items()})


def resolve_mobilevit(config: MobileVitConfig, source: str, bn_eps: float = 1e-5,
                      bn_momentum: float = 0.1) -> ModelSpec:
    """timm's ByobNet for a MobileViT config: layer prefixes 'stem', 'stages.S.B', 'final_conv'."""
    mobilevit_block = MobileVitBlockSpec if config.version == 1 else MobileVitV2BlockSpec
    layers = [Layer(ConvNormActSpec(3, config.stem, 3, 2, ACT, ("conv", "bn")), "stem")]
    in_features = config.stem
    for index, stage in enumerate(config.stages):
        out = make_divisible(stage.out)
        for b in range(stage.depth):
            stride = stage.stride if b == 0 else 1
            block = InvertedResidualSpec(in_features, make_divisible(in_features * stage.bottle_ratio), out, 3, stride,
                                         1, ACT, 0, None, stride == 1 and in_features == out, "timm_byob")
            layers.append(Layer(block, f"stages.{index}.{b}"))
            in_features = out
        if stage.transformer_dim:
            block = mobilevit_block(in_features, out, stage.transformer_dim, stage.transformer_depth)
            layers.append(Layer(block, f"stages.{index}.{stage.depth}"))
    if config.num_features:
        layers.append(Layer(ConvNormActSpec(in_features, config.num_features, 1, 1, ACT, ("conv", "bn")),
                            "final_conv"))
    return ModelSpec(source, tuple(layers), ClassifierSpec(classifier_key="head.fc"), bn_eps, bn_momentum)


TIMM_MOBILEVIT = dict(dropout=0.0, bn_eps=1e-5, bn_momentum=0.1)
# timm's pretrained_cfg (mobilevit.py `_cfg`): 256x256, crop_pct 0.9 (v2: 0.888), bicubic, inputs in [0, 1].
for _name, _config in MOBILEVIT.items():
    register(_name, functools.partial(resolve_mobilevit, _config), TIMM_MOBILEVIT, "timm",
             timm_weights(f"timm {_name}.cvnets_in1k", crop_size=256, crop_pct=0.9 if _config.version == 1 else 0.888,
                          interpolation="bicubic", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
