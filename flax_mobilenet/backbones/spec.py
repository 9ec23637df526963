"""A resolved model: its layers (each a block kind's spec with its PyTorch module path), its classifier
head and its norm settings.

A family file's `resolve_*` turns its table rows (what the papers and torchvision/timm write down)
into a `ModelSpec`, applying width multipliers, dilation and the like.  The builder, the weight
converter and `feature_info` all read this one value, so they cannot disagree about the architecture.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple, Optional, Union

from ..blocks import Block
from ..heads import DenseHeads


@dataclasses.dataclass(frozen=True)
class Layer:
    block: Block
    torch_prefix: str  # the block's module path in the reference's state dict ('features.3', 'blocks.1.0')
    tap: bool = True  # counts for the 'strideS' taps (timm leaves some final convs out of its feature levels)


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    """pool -> [hidden layer -> act] -> dropout -> linear, and where PyTorch keeps each tensor.

    The hidden layer is a Linear with bias (torchvision MobileNetV3, `hidden_norm=False`), or a 1x1 conv
    without bias followed by a BatchNorm (timm MobileNetV4, `hidden_norm=True`).
    """

    hidden_features: int = 0  # 0 = no hidden layer
    hidden_activation: Optional[str] = None
    hidden_norm: bool = False
    hidden_key: str = ""
    hidden_key_is_conv: bool = False  # timm stores the hidden Linear as a 1x1 conv
    hidden_norm_key: str = ""
    classifier_key: str = "classifier"
    task: ClassVar[str] = "classification"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    source: str  # 'torchvision' | 'timm': whose module layout the torch prefixes follow
    layers: tuple[Layer, ...]
    head: Union[ClassifierSpec, DenseHeads]  # a classifier, or dense-prediction heads on feature taps
    bn_eps: float
    bn_momentum: float  # PyTorch convention

    @property
    def task(self) -> str:
        """'classification', 'segmentation' or 'detection' (from the head)."""
        return self.head.task

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(layer.block for layer in self.layers)

    @property
    def num_features(self) -> int:
        """Width of the pooled features that feed the classifier."""
        return getattr(self.head, "hidden_features", 0) or self.layers[-1].block.out_features


class FeatureInfo(NamedTuple):
    """A feature map the backbone can return: `name` is a key of `feature_taps`."""

    name: str
    layer: int  # index of the layer (the `features_N` module; torchvision's `features[N]` for V1-V3)
    stride: int  # input pixels per output pixel
    channels: int
    inner: Optional[str] = None  # a feature point inside the layer's block ('expand'), None for its output


def feature_info(spec: ModelSpec) -> dict[str, FeatureInfo]:
    """Every tappable map: 'features.N' (layer N's output), 'features.N.POINT' (a point inside its block)
    and 'strideS' (the last tap layer at each output stride)."""
    taps: dict[str, FeatureInfo] = {}
    stride = 1
    for index, layer in enumerate(spec.layers):
        inner_stride = stride  # inner points sit before the block's own striding
        stride *= layer.block.stride
        name = f"features.{index}"
        for point, channels in layer.block.inner_taps.items():
            taps[f"{name}.{point}"] = FeatureInfo(f"{name}.{point}", index, inner_stride, channels, point)
        taps[name] = FeatureInfo(name, index, stride, layer.block.out_features)
    for index, layer in enumerate(spec.layers):
        if layer.tap:
            info = taps[f"features.{index}"]
            taps[f"stride{info.stride}"] = info._replace(name=f"stride{info.stride}")  # later layers win
    return taps
