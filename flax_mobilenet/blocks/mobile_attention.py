"""MobileNetV4's attention block (timm `MobileAttention` with multi-query attention): BatchNorm pre-norm ->
multi-query attention (keys/values optionally downsampled) -> layer scale (+ skip).

The pre-norm follows no conv, so it is a plain BatchNorm named 'norm' that BN folding leaves in place.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax

from ..layers import torch_keys as tk
from ..layers.attention import MultiQueryAttention2d
from ..layers.conv import LayerSettings
from .universal_ir import LayerScale, layer_scale_tensors


@dataclasses.dataclass(frozen=True)
class MobileAttentionSpec:
    in_features: int
    out_features: int
    num_heads: int
    head_dim: int  # key and value width per head
    kv_stride: int
    dw_kernel_size: int  # of the key/value downsampling depthwise conv
    layer_scale: bool

    @property
    def stride(self) -> int:
        return 1

    @property
    def residual(self) -> bool:
        return self.in_features == self.out_features

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return MobileAttention(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        attn, channels = (*flax_path, "attn"), self.in_features
        yield from tk.batch_norm((*flax_path, "norm"), tk.join(prefix, "norm"), channels)
        yield from tk.conv((*attn, "query"), tk.join(prefix, "attn.query.proj"), channels,
                           self.num_heads * self.head_dim, 1)
        for part in ("key", "value"):
            if self.kv_stride > 1:
                yield from tk.conv_norm((*attn, f"{part}_down"), tk.join(prefix, f"attn.{part}.down_conv"),
                                        tk.join(prefix, f"attn.{part}.norm"), channels, channels,
                                        self.dw_kernel_size, depthwise=True)
            yield from tk.conv((*attn, part), tk.join(prefix, f"attn.{part}.proj"), channels, self.head_dim, 1)
        yield from tk.conv((*attn, "output"), tk.join(prefix, "attn.output.proj"), self.num_heads * self.head_dim,
                           self.out_features, 1)
        if self.layer_scale:
            yield from layer_scale_tensors(prefix, flax_path, self.out_features)


class MobileAttention(nn.Module):
    spec: MobileAttentionSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        y = settings.batch_norm(train, name="norm")(x)
        y = MultiQueryAttention2d(spec.num_heads, spec.head_dim, spec.out_features, spec.kv_stride,
                                  spec.dw_kernel_size, settings, name="attn")(y, train)
        if spec.layer_scale:
            y = LayerScale(name="layer_scale")(y)
        return y + x if spec.residual else y
