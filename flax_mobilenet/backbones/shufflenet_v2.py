"""ShuffleNetV2 (torchvision `shufflenet_v2_x0_5` .. `x2_0`): table, resolver, registry entries.

torchvision has no width multiplier argument: each width is its own builder with its own channel table,
so each is registered under its own name and the width is not an override.
"""
from __future__ import annotations

import functools

from ..blocks.conv_norm_act import ConvNormActSpec
from ..blocks.pooling import MaxPoolSpec
from ..blocks.shuffle_unit import ShuffleUnitSpec
from ..registry import register
from ..weights import torchvision_weights
from .spec import ClassifierSpec, Layer, ModelSpec

STAGE_REPEATS = (4, 8, 4)  # units in stage2, stage3, stage4 (the first of each has stride 2)
# width -> output channels of conv1, stage2, stage3, stage4, conv5 (torchvision's `stages_out_channels`)
STAGE_CHANNELS = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


def resolve_shufflenet_v2(source: str, width: str, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> ModelSpec:
    """conv1 (3x3 s2) -> maxpool 3x3 s2 -> stages of shuffle units -> conv5 (1x1) -> pool -> fc."""
    stem, *stages, head = STAGE_CHANNELS[width]
    layers = [Layer(ConvNormActSpec(3, stem, 3, 2, "relu", ("0", "1")), "conv1"), Layer(MaxPoolSpec(stem), "maxpool")]
    in_features = stem
    for number, (repeats, out) in enumerate(zip(STAGE_REPEATS, stages), start=2):
        for i in range(repeats):
            layers.append(Layer(ShuffleUnitSpec(in_features, out, 2 if i == 0 else 1), f"stage{number}.{i}"))
            in_features = out
    layers.append(Layer(ConvNormActSpec(in_features, head, 1, 1, "relu", ("0", "1")), "conv5"))
    return ModelSpec(source, tuple(layers), ClassifierSpec(classifier_key="fc"), bn_eps, bn_momentum)


# x0_5 / x1_0: weights ported from the original ShuffleNetV2 code, evaluated at resize 256 / crop 224;
# x1_5 / x2_0: trained with torchvision's new recipe (pytorch/vision#5906), evaluated at resize 232 / crop 224.
for _width, _resize in (("x0_5", 256), ("x1_0", 256), ("x1_5", 232), ("x2_0", 232)):
    register(f"shufflenet_v2_{_width}", functools.partial(resolve_shufflenet_v2, width=_width),
             dict(dropout=0.0, bn_eps=1e-5, bn_momentum=0.1), "torchvision",  # torchvision's fc has no dropout
             torchvision_weights(f"torchvision ShuffleNet_V2_{_width.upper()}_Weights.IMAGENET1K_V1",
                                 resize_size=_resize))
