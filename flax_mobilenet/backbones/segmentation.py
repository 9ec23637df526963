"""Segmentation models (torchvision `lraspp_mobilenet_v3_large`, `deeplabv3_mobilenet_v3_large`): a registered
backbone's layers, then dense heads (`heads/`) on its feature taps.

torchvision builds them from `mobilenet_v3_large(dilated=True)` (BN eps 1e-3, momentum 0.01; the C5 stage
dilated instead of strided, output stride 16) wrapped in an IntermediateLayerGetter, so the backbone's
keys are `backbone.N...` (torchvision's `features.N`) and layers after the last tap are dropped.  The
taps are torchvision's: C2 = the first layer at output stride 8 ('low' of LR-ASPP, 'aux' of DeepLabV3)
and C5 = the last layer ('high', 'out').  Any family's resolver works as the backbone: the heads read
their channels from its `feature_info`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

from ..heads import DeepLabV3Spec, DenseHeads, FcnSpec, LrasppSpec
from ..registry import register
from ..weights import torchvision_segmentation_weights
from .mobilenet_v2 import resolve_v2
from .mobilenet_v3 import resolve_v3_large
from .spec import FeatureInfo, ModelSpec, feature_info

HEAD_OPTIONS = ("aux_loss",)  # options of the heads; the others go to the backbone's resolver


def torchvision_taps(info: Mapping[str, FeatureInfo]) -> tuple[str, str]:
    """(C2, C5) as torchvision's `_lraspp_mobilenetv3` picks them: the first layer at output stride 8, the last."""
    layers = [tap for name, tap in info.items() if name.startswith("features.") and tap.inner is None]
    low = next((tap.name for tap in layers if tap.stride == 8), None)
    if low is None:
        raise ValueError("the backbone has no layer at output stride 8 for the low-level tap")
    return low, layers[-1].name


def lraspp_heads(info: Mapping[str, FeatureInfo], low: str, high: str) -> DenseHeads:
    return DenseHeads((("out", LrasppSpec.on(info, low, high)),))


def deeplabv3_heads(info: Mapping[str, FeatureInfo], low: str, high: str, aux_loss: bool = False) -> DenseHeads:
    """DeepLabHead on `high`; with `aux_loss`, torchvision's auxiliary FCNHead on `low` (output 'aux')."""
    heads = [("out", DeepLabV3Spec.on(info, high))]
    if aux_loss:
        heads.append(("aux", FcnSpec.on(info, low)))
    return DenseHeads(tuple(heads))


def backbone_prefix(torch_prefix: str) -> str:
    """A layer's key prefix under torchvision's IntermediateLayerGetter: 'features.3' -> 'backbone.3'."""
    if torch_prefix == "features" or torch_prefix.startswith("features."):
        return "backbone" + torch_prefix[len("features"):]
    return f"backbone.{torch_prefix}" if torch_prefix else "backbone"


def resolve_segmentation(backbone: Callable[..., ModelSpec], heads: Callable[..., DenseHeads], source: str,
                         **options: Any) -> ModelSpec:
    """The backbone's spec with `heads(feature_info, low, high, **head options)` in place of its classifier."""
    head_options = {k: options.pop(k) for k in HEAD_OPTIONS if k in options}
    spec = backbone(source=source, **options)
    info = feature_info(spec)
    dense = heads(info, *torchvision_taps(info), **head_options)
    last = max(info[tap].layer for tap in dense.taps)
    layers = tuple(dataclasses.replace(layer, torch_prefix=backbone_prefix(layer.torch_prefix))
                   for layer in spec.layers[: last + 1])
    return dataclasses.replace(spec, layers=layers, head=dense)


# torchvision's segmentation builders: mobilenet_v3_large(dilated=True), num_classes 21 (VOC labels).
TORCHVISION_SEGMENTATION_V3 = dict(width_mult=1.0, reduced_tail=False, dilated=True, bn_eps=1e-3, bn_momentum=0.01,
                                   num_classes=21)

register("lraspp_mobilenet_v3_large", functools.partial(resolve_segmentation, resolve_v3_large, lraspp_heads),
         TORCHVISION_SEGMENTATION_V3, "torchvision",
         torchvision_segmentation_weights("torchvision LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"))
register("deeplabv3_mobilenet_v3_large", functools.partial(resolve_segmentation, resolve_v3_large, deeplabv3_heads),
         dict(TORCHVISION_SEGMENTATION_V3, aux_loss=False), "torchvision",
         torchvision_segmentation_weights("torchvision DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1"),
         variants=({}, {"aux_loss": True}))

# Beyond torchvision: LR-ASPP on MobileNetV2, dilated as torchvision dilates V3-Large (C5 at output stride 16), the
# backbone whose ImageNet weights start the shapes quickstart.  BatchNorm eps as mobilenet_v2's, for those weights.
register("lraspp_mobilenet_v2", functools.partial(resolve_segmentation, resolve_v2, lraspp_heads),
         dict(width_mult=1.0, dilated=True, bn_eps=1e-5, bn_momentum=0.01, num_classes=21), "torchvision",
         torchvision_segmentation_weights("none: no published weights; the transform is "
                                          "lraspp_mobilenet_v3_large's"),
         variants=({}, {"width_mult": 0.5}))
