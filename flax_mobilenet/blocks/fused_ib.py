"""Fused inverted bottleneck (timm `EdgeResidual`, EfficientNet-EdgeTPU's FusedMBConv): a dense kxk
expansion conv (strided) -> 1x1 linear projection (+ skip).  MobileNetV4 uses it as its first stage,
where a dense conv on few channels runs faster than 1x1 + depthwise.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings


@dataclasses.dataclass(frozen=True)
class FusedIBSpec:
    in_features: int
    expanded_features: int
    out_features: int
    kernel_size: int
    conv_stride: int
    activation: str

    @property
    def stride(self) -> int:
        return self.conv_stride

    @property
    def residual(self) -> bool:
        return self.conv_stride == 1 and self.in_features == self.out_features

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return FusedInvertedResidual(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        yield from tk.conv_norm((*flax_path, "expand"), tk.join(prefix, "conv_exp"), tk.join(prefix, "bn1"),
                                self.in_features, self.expanded_features, self.kernel_size)
        yield from tk.conv_norm((*flax_path, "project"), tk.join(prefix, "conv_pwl"), tk.join(prefix, "bn2"),
                                self.expanded_features, self.out_features, 1)


class FusedInvertedResidual(nn.Module):
    spec: FusedIBSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        y = ConvNormAct(spec.expanded_features, spec.kernel_size, spec.conv_stride, act=spec.activation,
                        settings=settings, name="expand")(x, train)
        y = ConvNormAct(spec.out_features, settings=settings, name="project")(y, train)
        return y + x if spec.residual else y
