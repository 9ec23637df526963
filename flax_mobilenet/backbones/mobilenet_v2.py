"""MobileNetV2 (torchvision `mobilenet_v2`, timm `mobilenetv2_100`): table, resolver, registry entries."""
from __future__ import annotations

from ..blocks.conv_norm_act import ConvNormActSpec
from ..blocks.inverted_residual import InvertedResidualSpec
from ..layers.ops import make_divisible
from ..registry import register
from ..weights import timm_weights, torchvision_weights
from .spec import ClassifierSpec, Layer, ModelSpec

# rows of (expand_ratio, out_channels, repeats, first_stride)
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


def resolve_v2(source: str, width_mult: float = 1.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
               dilated: bool = False, rows=MOBILENET_V2) -> ModelSpec:
    """`dilated`: the last strided stage and those after it dilated (2) instead of strided, output stride 16, as
    DeepLab puts MobileNetV2 under a segmentation head (the MobileNetV2 paper's Mobile DeepLabv3); the weights
    keep their shapes."""
    timm = source == "timm"
    dilated_from = max(i for i, row in enumerate(rows) if row[3] == 2) if dilated else len(rows)
    stem = make_divisible(32 * width_mult)
    layers = [Layer(ConvNormActSpec(3, stem, 3, 2, "relu6", ("conv_stem", "bn1") if timm else ("0", "1")),
                    "" if timm else "features.0")]
    in_features = stem
    for stage, (ratio, out, repeats, first_stride) in enumerate(rows):
        out = make_divisible(out * width_mult)
        for i in range(repeats):
            stride = first_stride if i == 0 and stage < dilated_from else 1
            dilation = 2 if stage >= dilated_from else 1
            hidden = int(round(in_features * ratio))  # no divisor rounding, as torchvision
            block = InvertedResidualSpec(in_features, hidden, out, 3, stride, dilation, "relu6", 0, None,
                                         stride == 1 and in_features == out, source if timm else "torchvision_v2")
            layers.append(Layer(block, f"blocks.{stage}.{i}" if timm else f"features.{len(layers)}"))
            in_features = out
    head = make_divisible(1280 * max(1.0, width_mult))
    layers.append(Layer(ConvNormActSpec(in_features, head, 1, 1, "relu6", ("conv_head", "bn2") if timm else ("0", "1")),
                        "" if timm else f"features.{len(layers)}"))
    classifier = ClassifierSpec(classifier_key="classifier" if timm else "classifier.1")
    return ModelSpec(source, tuple(layers), classifier, bn_eps, bn_momentum)


register("mobilenet_v2", resolve_v2, dict(width_mult=1.0, dropout=0.2, bn_eps=1e-5, bn_momentum=0.1), "torchvision",
         torchvision_weights("torchvision MobileNet_V2_Weights.IMAGENET1K_V1"),
         variants=tuple(dict(width_mult=w) for w in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)))
register("mobilenetv2_100", resolve_v2, dict(width_mult=1.0, dropout=0.0, bn_eps=1e-5, bn_momentum=0.1), "timm",
         timm_weights("timm mobilenetv2_100.ra_in1k"), fixed=("width_mult",))
