"""MobileNetV4's Universal Inverted Bottleneck (timm `UniversalInvertedResidual`), and layer scale.

optional depthwise kxk (no activation) -> 1x1 expansion -> optional depthwise kxk -> 1x1 projection
(no activation) -> optional layer scale (+ skip).  Which depthwise convs exist gives the four forms:
ExtraDW (both), IB (middle only: MobileNetV2's block), ConvNeXt-like (start only) and FFN (neither).
The stride sits on the middle depthwise conv, or on the start one when there is no middle one.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings

LAYER_SCALE_INIT = 1e-5  # timm's layer_scale_init_value for the MNV4 hybrids


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (timm `LayerScale2d`, parameter 'gamma')."""

    init_value: float = LAYER_SCALE_INIT

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
        return x * gamma.astype(x.dtype)


def layer_scale_tensors(prefix: str, flax_path: tk.FlaxPath, channels: int) -> Iterator[tk.TensorMapping]:
    """timm's `<prefix>.layer_scale.gamma` -> FLAX_PATH/layer_scale/gamma."""
    yield tk.TensorMapping(tk.join(prefix, "layer_scale.gamma"), (channels,), "params",
                           (*flax_path, "layer_scale", "gamma"), tk.same)


@dataclasses.dataclass(frozen=True)
class UniversalIRSpec:
    in_features: int
    expanded_features: int
    out_features: int
    start_kernel: int  # depthwise conv before the expansion; 0 = none
    mid_kernel: int  # depthwise conv after the expansion; 0 = none
    block_stride: int
    activation: str
    layer_scale: bool  # timm gives the hybrid models' blocks a layer scale

    def __post_init__(self) -> None:
        if self.block_stride > 1 and not (self.start_kernel or self.mid_kernel):
            raise ValueError("a strided universal inverted bottleneck needs a depthwise conv to stride")

    @property
    def stride(self) -> int:
        return self.block_stride

    @property
    def residual(self) -> bool:
        return self.block_stride == 1 and self.in_features == self.out_features

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return UniversalInvertedResidual(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        parts = [("dw_start", "dw_start", self.in_features, self.in_features, self.start_kernel, True),
                 ("expand", "pw_exp", self.in_features, self.expanded_features, 1, False),
                 ("dw_mid", "dw_mid", self.expanded_features, self.expanded_features, self.mid_kernel, True),
                 ("project", "pw_proj", self.expanded_features, self.out_features, 1, False)]
        for flax_name, torch_name, in_ch, out_ch, kernel, depthwise in parts:
            if kernel:
                yield from tk.conv_norm((*flax_path, flax_name), tk.join(prefix, torch_name, "conv"),
                                        tk.join(prefix, torch_name, "bn"), in_ch, out_ch, kernel, depthwise)
        if self.layer_scale:
            yield from layer_scale_tensors(prefix, flax_path, self.out_features)


class UniversalInvertedResidual(nn.Module):
    spec: UniversalIRSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        shortcut = x
        if spec.start_kernel:
            x = ConvNormAct(spec.in_features, spec.start_kernel, 1 if spec.mid_kernel else spec.block_stride,
                            depthwise=True, settings=settings, name="dw_start")(x, train)
        x = ConvNormAct(spec.expanded_features, act=spec.activation, settings=settings, name="expand")(x, train)
        if spec.mid_kernel:
            x = ConvNormAct(spec.expanded_features, spec.mid_kernel, spec.block_stride, depthwise=True,
                            act=spec.activation, settings=settings, name="dw_mid")(x, train)
        x = ConvNormAct(spec.out_features, settings=settings, name="project")(x, train)
        if spec.layer_scale:
            x = LayerScale(name="layer_scale")(x)
        return x + shortcut if spec.residual else x
