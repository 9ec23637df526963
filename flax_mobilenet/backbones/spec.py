"""A resolved model: its layers (each a block kind's spec with its PyTorch module path), an optional neck (a
small graph of maps over the layers' taps), its head and its norm settings.

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


NECK_OPS = ("block", "concat", "upsample")


@dataclasses.dataclass(frozen=True)
class NeckNode:
    """One map of a neck (YOLO's PAN/FPN): a block on one input, the channel concatenation of several inputs
    (PyTorch's `torch.cat(dim=1)`, in the order given), or a nearest-neighbour x2 upsample of one input.

    Inputs are `feature_info` names: the backbone's taps ('stride16', 'features.6') or earlier nodes ('neck.3'), so
    a neck sits on the taps of any backbone.  The node is the map 'neck.I' (I its index in `ModelSpec.neck`), its
    Flax module `neck_I`.
    """

    op: str  # one of NECK_OPS
    inputs: tuple[str, ...]
    torch_prefix: str = ""  # the module path of its tensors (a block's; ops have none) in the reference
    block: Optional[Block] = None  # op 'block' only

    def __post_init__(self) -> None:
        if self.op not in NECK_OPS:
            raise ValueError(f"neck op must be one of {NECK_OPS}, got {self.op!r}")
        if (self.op == "block") != (self.block is not None):
            raise ValueError("a neck node has a block exactly when its op is 'block'")
        if self.op != "concat" and len(self.inputs) != 1:
            raise ValueError(f"a neck {self.op} takes one input, got {self.inputs}")


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
    neck: tuple[NeckNode, ...] = ()  # maps between the layers and the head (YOLO); the head may read them

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
    layer: int  # index of the layer (the `features_N` module; torchvision's `features[N]` for V1-V3); for a
    # neck map, the deepest layer it depends on (how far the backbone must run)
    stride: int  # input pixels per output pixel
    channels: int
    inner: Optional[str] = None  # a feature point inside the layer's block ('expand'), None for its output
    node: Optional[int] = None  # a neck map: its index in `ModelSpec.neck`


def feature_info(spec: ModelSpec) -> dict[str, FeatureInfo]:
    """Every tappable map: 'features.N' (layer N's output), 'features.N.POINT' (a point inside its block),
    'strideS' (the last tap layer at each output stride) and 'neck.I' (the neck's maps)."""
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
    for index, node in enumerate(spec.neck):
        name = f"neck.{index}"
        unknown = [tap for tap in node.inputs if tap not in taps]
        if unknown:
            raise ValueError(f"{name} ({node.op}) reads {unknown[0]!r}, which is neither a backbone tap nor an "
                             f"earlier neck map")
        sources = [taps[tap] for tap in node.inputs]
        layer = max(source.layer for source in sources)
        if node.op == "concat":
            if len({source.stride for source in sources}) != 1:
                raise ValueError(f"{name} concatenates maps of different strides: "
                                 + ", ".join(f"{s.name} (stride {s.stride})" for s in sources))
            taps[name] = FeatureInfo(name, layer, sources[0].stride, sum(s.channels for s in sources), node=index)
        elif node.op == "upsample":
            taps[name] = FeatureInfo(name, layer, sources[0].stride // 2, sources[0].channels, node=index)
        else:
            if node.block.in_features != sources[0].channels:
                raise ValueError(f"{name}: its block takes {node.block.in_features} channels, {sources[0].name} "
                                 f"has {sources[0].channels}")
            taps[name] = FeatureInfo(name, layer, sources[0].stride * node.block.stride, node.block.out_features,
                                     node=index)
    return taps
