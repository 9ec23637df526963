"""MobileNetV1 (timm's `mobilenetv1_100`; torchvision has none): table, resolver, registry entries."""
from __future__ import annotations

from ..blocks.conv_norm_act import ConvNormActSpec
from ..blocks.inverted_residual import InvertedResidualSpec
from ..layers.ops import make_divisible
from ..registry import register
from ..weights import timm_weights
from .spec import ClassifierSpec, Layer, ModelSpec

# rows of (out_channels, repeats, first_stride)
MOBILENET_V1 = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
TIMM_STEM = ("conv_stem", "bn1")


def resolve_v1(source: str, width_mult: float = 1.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
               activation: str = "relu6", rows=MOBILENET_V1) -> ModelSpec:
    if source != "timm":
        raise ValueError("torchvision has no MobileNetV1; MobileNetV1 weights come in timm's layout")
    stem = make_divisible(32 * width_mult)
    layers = [Layer(ConvNormActSpec(3, stem, 3, 2, activation, TIMM_STEM), "")]
    in_features = stem
    for stage, (out, repeats, first_stride) in enumerate(rows):
        out = make_divisible(out * width_mult)
        for i in range(repeats):
            block = InvertedResidualSpec(in_features, in_features, out, 3, first_stride if i == 0 else 1, 1,
                                         activation, 0, activation, False, "timm")
            layers.append(Layer(block, f"blocks.{stage}.{i}"))
            in_features = out
    return ModelSpec(source, tuple(layers), ClassifierSpec(), bn_eps, bn_momentum)


V1_WEIGHTS = timm_weights("timm mobilenetv1_100.ra4_e3600_r224_in1k", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
for _name, _fixed in (("mobilenet_v1", ()), ("mobilenetv1_100", ("width_mult",))):
    register(_name, resolve_v1, dict(width_mult=1.0, dropout=0.0, bn_eps=1e-5, bn_momentum=0.1), "timm",
             V1_WEIGHTS, fixed=_fixed,
             variants=tuple(dict(width_mult=w) for w in (0.25, 0.5, 0.75, 1.0)) if not _fixed else ({},))
