"""SSDLite detection models (torchvision `ssdlite320_mobilenet_v3_large`): a registered backbone, four extra
blocks, and the SSDLite head (`heads/ssdlite.py`) on six feature maps.

torchvision's `SSDLiteFeatureExtractorMobileNet` (MobileNetV3 paper section 6.3, MobileNetV2 paper section 6.2)
takes C4 = the last strided block (the first block at output stride 32) and cuts it after its expansion:
map 0 is that expansion's output (stride 16), map 1 the backbone's last layer (stride 32), maps 2-5 the four
`_extra_block`s (512, 256, 256, 128 channels, stride 2 each).  Its state dict nests the backbone in two
Sequentials: `backbone.features.0.N` (layers before C4, then C4's expansion), `backbone.features.1.N` (the rest
of C4, then the later layers), then `backbone.extra.N` and the head's `head.*`.  Here the backbone keeps its
layers whole (`features_N`, C4 with its 'expand' tap) and `SplitKeysSpec` moves C4's keys.  BatchNorm is
torchvision's SSDLite norm_layer everywhere: eps 1e-3, momentum 0.03.

The same construction works on any backbone with a stride-32 layer; the head's channels and strides come from
its `feature_info`.  Where C4 has no expansion tap (MobileNetV4's blocks), map 0 is the last stride-16 layer.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from ..blocks.inverted_residual import InvertedResidualSpec
from ..blocks.split_keys import SplitKeysSpec
from ..blocks.ssdlite_extra import SsdliteExtraSpec
from ..heads import DenseHeads, SsdliteSpec
from ..registry import register
from ..weights import torchvision_detection_weights
from .mobilenet_v2 import resolve_v2
from .mobilenet_v3 import resolve_v3_large
from .spec import Layer, ModelSpec, feature_info

EXTRA_FEATURES = (512, 256, 256, 128)  # torchvision: get_depth(d) = max(16, int(d * 1.0)); width_mult is not passed
# The Sequential inside each torchvision inverted residual: its first entry is the expansion.
BLOCK_SEQUENTIAL = {"torchvision_v3": "block", "torchvision_v2": "conv"}


def c4_index(spec: ModelSpec) -> int:
    """torchvision's c4_pos: the last layer that strides (`_mobilenet_extractor`: stage_indices[-2])."""
    strided = [i for i, layer in enumerate(spec.layers) if layer.block.stride > 1]
    if not strided or strided[-1] == 0:
        raise ValueError("SSDLite needs a backbone with a strided block after its stem")
    return strided[-1]


def _split_prefixes(spec: ModelSpec, c4: int, expand: bool) -> list[Layer]:
    """torchvision's key layout: layers before C4 (and C4's expansion) under `backbone.features.0`, the rest
    under `backbone.features.1`; timm-named layers keep their names under `backbone.`."""
    layers = []
    for index, layer in enumerate(spec.layers):
        prefix, block = layer.torch_prefix, layer.block
        if not (prefix == "features" or prefix.startswith("features.")):
            layers.append(dataclasses.replace(layer, torch_prefix=f"backbone.{prefix}" if prefix else "backbone"))
            continue
        if index < c4:
            prefix = f"backbone.features.0.{index}"
        else:
            prefix = f"backbone.features.1.{index - c4}"
        if index == c4 and expand and isinstance(block, InvertedResidualSpec) \
                and block.torch_layout in BLOCK_SEQUENTIAL:
            inner = BLOCK_SEQUENTIAL[block.torch_layout]
            block = SplitKeysSpec(block, ((f"{inner}.0", f"backbone.features.0.{c4}"), (inner, prefix)))
        layers.append(Layer(block, prefix, layer.tap))
    return layers


def resolve_ssdlite(backbone: Callable[..., ModelSpec], source: str,
                    extra_features: tuple[int, ...] = EXTRA_FEATURES, **options: Any) -> ModelSpec:
    """The backbone's layers, the extra blocks as further layers (`backbone.extra.N`), and the SSDLite head
    on C4's expansion (or the last stride-16 layer), the last backbone layer and each extra block."""
    spec = backbone(source=source, **options)
    c4 = c4_index(spec)
    info = feature_info(spec)
    expand = f"features.{c4}.expand" in info
    first = f"features.{c4}.expand" if expand else f"features.{c4 - 1}"
    layers = _split_prefixes(spec, c4, expand)
    in_features = spec.layers[-1].block.out_features
    for index, out in enumerate(extra_features):
        layers.append(Layer(SsdliteExtraSpec(in_features, out), f"backbone.extra.{index}"))
        in_features = out
    spec = dataclasses.replace(spec, layers=tuple(layers))
    count = len(layers) - len(extra_features)  # backbone layers
    taps = (first, *(f"features.{i}" for i in range(count - 1, len(layers))))
    head = SsdliteSpec.on(feature_info(spec), taps)
    return dataclasses.replace(spec, head=DenseHeads((("out", head),)))


# torchvision's ssdlite320_mobilenet_v3_large: mobilenet_v3_large(reduced_tail=True) -- reduced whenever no
# ImageNet backbone weights are given, which includes its COCO_V1 weights -- with norm_layer
# BatchNorm2d(eps=0.001, momentum=0.03); 91 classes (COCO ids, background 0).
TORCHVISION_SSDLITE_V3 = dict(reduced_tail=True, bn_eps=1e-3, bn_momentum=0.03, num_classes=91)
# MobileNetV2 paper section 6.2 (TF Object Detection API's ssdlite_mobilenet_v2): the first map is the expansion
# of 'layer_15' = torchvision's features.14, the first block at output stride 32 (576 channels, stride 16),
# the second the final 1x1 conv (1280); the rest as torchvision's SSDLite.
SSDLITE_V2 = dict(bn_eps=1e-3, bn_momentum=0.03, num_classes=91)

register("ssdlite320_mobilenet_v3_large", functools.partial(resolve_ssdlite, resolve_v3_large),
         TORCHVISION_SSDLITE_V3, "torchvision",
         torchvision_detection_weights("torchvision SSDLite320_MobileNet_V3_Large_Weights.COCO_V1"),
         variants=({}, {"reduced_tail": False}))
register("ssdlite320_mobilenet_v2", functools.partial(resolve_ssdlite, resolve_v2), SSDLITE_V2, "torchvision",
         torchvision_detection_weights("none: no published weights (torchvision has no SSDLite MobileNetV2); "
                                       "the transform is ssdlite320_mobilenet_v3_large's"))
