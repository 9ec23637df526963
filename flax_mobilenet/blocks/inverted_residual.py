"""MobileNet V1/V2/V3's block: optional 1x1 expansion -> depthwise kxk -> optional SE -> 1x1 projection (+ skip).

With no expansion and an activated projection it is MobileNetV1's depthwise-separable block; with a
linear projection, MobileNetV2's first block.  Feature point: 'expand', the expansion's output (what
SSDLite taps inside MobileNetV3's C4 block).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence, Union

import flax.linen as nn
import jax

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings
from ..layers.squeeze_excite import SqueezeExcite

# Module names of each part under the block's prefix, per PyTorch implementation ('se' is the SE
# module; its convs are named by SE_NAMES).
TORCH_NAMES = {
    # torchvision MobileNetV2: Conv2dNormActivation for expand and depthwise, then a bare Conv2d and BatchNorm2d.
    "torchvision_v2": lambda parts: {
        **{part: f"conv.{j}.0" for j, part in enumerate(parts)},
        **{part + "_bn": f"conv.{j}.1" for j, part in enumerate(parts)},
        "project": f"conv.{len(parts)}", "project_bn": f"conv.{len(parts) + 1}"},
    # torchvision MobileNetV3: every part, SE included, is one entry of `block`.
    "torchvision_v3": lambda parts: {
        **{part: f"block.{j}.0" for j, part in enumerate(parts + ["project"]) if part != "se"},
        **{part + "_bn": f"block.{j}.1" for j, part in enumerate(parts + ["project"]) if part != "se"},
        "se": f"block.{parts.index('se')}" if "se" in parts else ""},
    # timm InvertedResidual (with expansion) and DepthwiseSeparableConv (without).
    "timm": lambda parts: (
        dict(expand="conv_pw", expand_bn="bn1", depthwise="conv_dw", depthwise_bn="bn2", se="se",
             project="conv_pwl", project_bn="bn3") if "expand" in parts else
        dict(depthwise="conv_dw", depthwise_bn="bn1", se="se", project="conv_pw", project_bn="bn2")),
    # timm byobnet BottleneckBlock with bottle_in/linear_out (MobileViT's 'bottle'): three ConvNormActs.
    "timm_byob": lambda parts: dict(expand="conv1_1x1.conv", expand_bn="conv1_1x1.bn", depthwise="conv2_kxk.conv",
                                    depthwise_bn="conv2_kxk.bn", project="conv3_1x1.conv", project_bn="conv3_1x1.bn"),
    # Seed 004's MobileNetV2 InverseResidualBlock: conv1 (absent, an Identity, without expansion), depthwise_conv
    # and conv2, each a ConvNormReLUBlock (conv, bn; conv2 without activation).
    "seed004_v2": lambda parts: dict(expand="conv1.conv", expand_bn="conv1.bn", depthwise="depthwise_conv.conv",
                                     depthwise_bn="depthwise_conv.bn", project="conv2.conv", project_bn="conv2.bn"),
}
SE_NAMES = {"torchvision_v2": ("fc1", "fc2"), "torchvision_v3": ("fc1", "fc2"), "timm": ("conv_reduce", "conv_expand")}


@dataclasses.dataclass(frozen=True)
class InvertedResidualSpec:
    in_features: int
    expanded_features: int
    out_features: int
    kernel_size: int
    depthwise_stride: int  # 1 where dilation replaces striding
    dilation: int
    activation: str
    se_features: int  # 0 = no squeeze-excite (V3's: ReLU, hard-sigmoid gate)
    project_activation: Optional[str]
    residual: bool
    torch_layout: str  # a key of TORCH_NAMES

    @property
    def stride(self) -> int:
        return self.depthwise_stride

    @property
    def has_expansion(self) -> bool:
        return self.expanded_features != self.in_features

    @property
    def inner_taps(self) -> dict[str, int]:
        return {"expand": self.expanded_features} if self.has_expansion else {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return InvertedResidual(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        parts = (["expand"] if self.has_expansion else []) + ["depthwise"] + (["se"] if self.se_features else [])
        names = {part: tk.join(prefix, key) for part, key in TORCH_NAMES[self.torch_layout](parts).items()}
        if self.has_expansion:
            yield from tk.conv_norm((*flax_path, "expand"), names["expand"], names["expand_bn"], self.in_features,
                                    self.expanded_features, 1)
        yield from tk.conv_norm((*flax_path, "depthwise"), names["depthwise"], names["depthwise_bn"],
                                self.expanded_features, self.expanded_features, self.kernel_size, depthwise=True)
        if self.se_features:
            reduce, expand = SE_NAMES[self.torch_layout]
            yield from tk.dense((*flax_path, "se", "reduce"), tk.join(names["se"], reduce), self.expanded_features,
                                self.se_features, as_conv1x1=True)
            yield from tk.dense((*flax_path, "se", "expand"), tk.join(names["se"], expand), self.se_features,
                                self.expanded_features, as_conv1x1=True)
        yield from tk.conv_norm((*flax_path, "project"), names["project"], names["project_bn"],
                                self.expanded_features, self.out_features, 1)


class InvertedResidual(nn.Module):
    spec: InvertedResidualSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 taps: Sequence[str] = ()) -> Union[jax.Array, tuple[jax.Array, dict[str, jax.Array]]]:
        spec, settings = self.spec, self.settings
        shortcut, inner = x, {}
        if spec.has_expansion:
            x = ConvNormAct(spec.expanded_features, act=spec.activation, settings=settings, name="expand")(x, train)
            inner["expand"] = x
        x = ConvNormAct(spec.expanded_features, spec.kernel_size, spec.depthwise_stride, spec.dilation,
                        depthwise=True, act=spec.activation, settings=settings, name="depthwise")(x, train)
        if spec.se_features:
            x = SqueezeExcite(spec.se_features, dtype=settings.dtype, name="se")(x)
        x = ConvNormAct(spec.out_features, act=spec.project_activation, settings=settings, name="project")(x, train)
        if spec.residual:
            x = x + shortcut
        return (x, {name: inner[name] for name in taps}) if taps else x
