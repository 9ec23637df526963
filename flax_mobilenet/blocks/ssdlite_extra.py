"""SSDLite's extra feature block (torchvision `ssdlite._extra_block`, MobileNetV2 paper section 6.2):
1x1 conv-BN-ReLU6 to half the output channels -> 3x3 depthwise stride-2 conv-BN-ReLU6 -> 1x1 conv-BN-ReLU6.

PyTorch keys: a Sequential of three Conv2dNormActivation, `PREFIX.{0,1,2}.{0,1}` (conv, norm).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings

PARTS = ("reduce", "depthwise", "expand")  # Flax names of the three ConvNormActs, in PyTorch's order


@dataclasses.dataclass(frozen=True)
class SsdliteExtraSpec:
    in_features: int
    out_features: int
    activation: str = "relu6"

    @property
    def mid_features(self) -> int:
        return self.out_features // 2  # torchvision: intermediate_channels = out_channels // 2

    @property
    def stride(self) -> int:
        return 2

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return SsdliteExtra(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        mid = self.mid_features
        shapes = ((self.in_features, mid, 1, False), (mid, mid, 3, True), (mid, self.out_features, 1, False))
        for index, (part, (in_ch, out_ch, kernel, depthwise)) in enumerate(zip(PARTS, shapes)):
            yield from tk.conv_norm((*flax_path, part), tk.join(prefix, f"{index}.0"), tk.join(prefix, f"{index}.1"),
                                    in_ch, out_ch, kernel, depthwise=depthwise)


class SsdliteExtra(nn.Module):
    spec: SsdliteExtraSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, mid = self.spec, self.settings, self.spec.mid_features
        x = ConvNormAct(mid, act=spec.activation, settings=settings, name="reduce")(x, train)
        x = ConvNormAct(mid, 3, 2, depthwise=True, act=spec.activation, settings=settings, name="depthwise")(x, train)
        return ConvNormAct(spec.out_features, act=spec.activation, settings=settings, name="expand")(x, train)
