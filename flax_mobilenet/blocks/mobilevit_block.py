"""MobileViT's blocks (timm `MobileVitBlock`, `MobileVitV2Block`): local kxk conv, then global attention
over 2x2-patch sequences.

v1 (`MobileVitBlockSpec`):

conv_kxk (conv-BN-act) -> conv_1x1 (no norm, no bias) -> unfold into patches -> pre-norm transformer
blocks -> LayerNorm -> fold -> conv_proj (1x1 conv-BN-act) -> concat with the block's input ->
conv_fusion (kxk conv-BN-act).  Attention runs per pixel position inside a patch, across patches.
A map whose size is not a multiple of the patch is resized bilinearly (half-pixel centres, no
antialiasing: torch's `F.interpolate(..., align_corners=False)`) up to one and back after folding.
timm's `no_fusion` is False for every mobilevit_* model, so conv_fusion is always there.

v2 (`MobileVitV2BlockSpec`): a map that is not a multiple of the patch is first resized up to one
(bilinear, align_corners=True) and stays that size -> depthwise conv_kxk (conv-BN-act) -> conv_1x1 ->
unfold -> linear-attention transformer blocks (GroupNorm(1)) -> GroupNorm(1) -> fold -> conv_proj
(1x1 conv-BN, no activation); no fusion, no residual.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings, PointwiseConv
from ..layers.transformer import (TORCH_LAYER_NORM_EPS, LinearTransformerBlock, TransformerBlock, group_norm1,
                                  layer_norm, linear_transformer_block_tensors, transformer_block_tensors)


@dataclasses.dataclass(frozen=True)
class _PatchTransformerSpec:
    """What both versions share: widths, the transformer's depth, and the PyTorch keys around it."""

    in_features: int
    out_features: int
    transformer_dim: int
    transformer_depth: int
    mlp_ratio: float = 2.0
    patch_size: int = 2
    kernel_size: int = 3
    activation: str = "silu"
    norm_eps: float = TORCH_LAYER_NORM_EPS  # the LayerNorms (v1) / GroupNorms (v2): torch's default eps

    depthwise_local: ClassVar[bool]  # conv_kxk is depthwise (v2) or dense (v1)
    fusion: ClassVar[bool]  # a conv_fusion over [input, conv_proj output] closes the block (v1)
    transformer_tensors: ClassVar[Callable[..., Iterator[tk.TensorMapping]]]

    @property
    def stride(self) -> int:
        return 1

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    @property
    def mlp_features(self) -> int:
        return int(self.transformer_dim * self.mlp_ratio)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        def key(*parts: str) -> str:
            return tk.join(prefix, *parts)

        yield from tk.conv_norm((*flax_path, "conv_kxk"), key("conv_kxk.conv"), key("conv_kxk.bn"), self.in_features,
                                self.in_features, self.kernel_size, depthwise=self.depthwise_local)
        yield from tk.conv((*flax_path, "conv_1x1"), key("conv_1x1"), self.in_features, self.transformer_dim, 1)
        for i in range(self.transformer_depth):
            yield from type(self).transformer_tensors((*flax_path, f"transformer_{i}"), key(f"transformer.{i}"),
                                                      self.transformer_dim, self.mlp_features)
        yield from tk.layer_norm((*flax_path, "norm"), key("norm"), self.transformer_dim)
        yield from tk.conv_norm((*flax_path, "conv_proj"), key("conv_proj.conv"), key("conv_proj.bn"),
                                self.transformer_dim, self.out_features, 1)
        if self.fusion:
            yield from tk.conv_norm((*flax_path, "conv_fusion"), key("conv_fusion.conv"), key("conv_fusion.bn"),
                                    self.in_features + self.out_features, self.out_features, self.kernel_size)


@dataclasses.dataclass(frozen=True)
class MobileVitBlockSpec(_PatchTransformerSpec):
    num_heads: int = 4

    depthwise_local: ClassVar[bool] = False
    fusion: ClassVar[bool] = True
    transformer_tensors = staticmethod(transformer_block_tensors)

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return MobileVitBlock(self, settings, name=name)


@dataclasses.dataclass(frozen=True)
class MobileVitV2BlockSpec(_PatchTransformerSpec):
    depthwise_local: ClassVar[bool] = True
    fusion: ClassVar[bool] = False
    transformer_tensors = staticmethod(linear_transformer_block_tensors)

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return MobileVitV2Block(self, settings, name=name)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """NHWC bilinear resize as torch's `F.interpolate(mode='bilinear', align_corners=False)` (no antialias)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="bilinear", antialias=False)


def resize_bilinear_align_corners(x: jax.Array, height: int, width: int) -> jax.Array:
    """NHWC bilinear resize as torch's `F.interpolate(mode='bilinear', align_corners=True)`.

    Output pixel i samples the input at i * (n_in - 1) / (n_out - 1) (float32, as torch computes it),
    interpolating linearly between its two neighbours; one axis at a time.
    """
    for axis, size in ((1, height), (2, width)):
        length = x.shape[axis]
        scale = np.float32((length - 1) / (size - 1)) if size > 1 else np.float32(0)
        position = np.arange(size, dtype=np.float32) * scale
        low = np.minimum(position.astype(np.int64), length - 1)
        high = np.minimum(low + 1, length - 1)
        frac = jnp.asarray((position - low).astype(np.float32), x.dtype).reshape([-1 if a == axis else 1
                                                                               for a in range(x.ndim)])
        x = jnp.take(x, low, axis=axis) * (1 - frac) + jnp.take(x, high, axis=axis) * frac
    return x


def patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """The map size rounded up to whole patches."""
    return math.ceil(height / patch) * patch, math.ceil(width / patch) * patch


def unfold_patches(x: jax.Array, patch: int) -> jax.Array:
    """(B, H, W, C) -> (B, patch * patch, patches, C): one token sequence per position inside a patch."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // patch, patch, width // patch, patch, channels)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(batch, patch * patch, -1, channels)


def fold_patches(x: jax.Array, patch: int, height: int, width: int) -> jax.Array:
    """The inverse of `unfold_patches`."""
    batch, _, _, channels = x.shape
    x = x.reshape(batch, patch, patch, height // patch, width // patch, channels)
    return x.transpose(0, 3, 1, 4, 2, 5).reshape(batch, height, width, channels)


class MobileVitBlock(nn.Module):
    spec: MobileVitBlockSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        shortcut = x
        x = ConvNormAct(spec.in_features, spec.kernel_size, act=spec.activation, settings=settings,
                        name="conv_kxk")(x, train)
        x = PointwiseConv(spec.transformer_dim, dtype=settings.dtype, name="conv_1x1")(x)

        height, width, patch = x.shape[1], x.shape[2], spec.patch_size
        grid_h, grid_w = patch_grid(height, width, patch)
        resized = (grid_h, grid_w) != (height, width)
        if resized:
            x = resize_bilinear(x, grid_h, grid_w)
        x = unfold_patches(x, patch)
        for i in range(spec.transformer_depth):
            x = TransformerBlock(spec.num_heads, spec.mlp_features, spec.activation, spec.norm_eps,
                                 settings.dtype, name=f"transformer_{i}")(x)
        x = layer_norm(spec.norm_eps, settings.dtype, "norm")(x)
        x = fold_patches(x, patch, grid_h, grid_w)
        if resized:
            x = resize_bilinear(x, height, width)

        x = ConvNormAct(spec.out_features, act=spec.activation, settings=settings, name="conv_proj")(x, train)
        return ConvNormAct(spec.out_features, spec.kernel_size, act=spec.activation, settings=settings,
                           name="conv_fusion")(jnp.concatenate([shortcut, x], axis=-1), train)


class MobileVitV2Block(nn.Module):
    spec: MobileVitV2BlockSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, patch = self.spec, self.settings, self.spec.patch_size
        grid_h, grid_w = patch_grid(x.shape[1], x.shape[2], patch)
        if (grid_h, grid_w) != x.shape[1:3]:
            x = resize_bilinear_align_corners(x, grid_h, grid_w)
        x = ConvNormAct(spec.in_features, spec.kernel_size, depthwise=True, act=spec.activation, settings=settings,
                        name="conv_kxk")(x, train)
        x = unfold_patches(PointwiseConv(spec.transformer_dim, dtype=settings.dtype, name="conv_1x1")(x), patch)
        for i in range(spec.transformer_depth):
            x = LinearTransformerBlock(spec.mlp_features, spec.activation, spec.norm_eps, settings.dtype,
                                       name=f"transformer_{i}")(x)
        x = fold_patches(group_norm1(spec.norm_eps, settings.dtype, "norm")(x), patch, grid_h, grid_w)
        return ConvNormAct(spec.out_features, settings=settings, name="conv_proj")(x, train)
