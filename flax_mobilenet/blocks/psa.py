"""YOLO11's `C2PSA` and its parts (`PSABlock`, `Attention`), as ultralytics 8.4 computes them.

- `Attention(dim, num_heads, attn_ratio=0.5)`: head_dim = dim // heads, key_dim = int(head_dim * attn_ratio);
  qkv = 1x1 Conv+BN, no activation, to dim + 2 * heads * key_dim channels, laid out *per head* as
  [q (key_dim), k (key_dim), v (head_dim)]; attention over the H*W positions, softmax(q^T k * key_dim^-0.5);
  out = v attn^T (channels head-major, head_dim minor) + pe(v), pe a 3x3 depthwise Conv+BN without activation
  on v seen as a (dim, H, W) map; then proj, a 1x1 Conv+BN without activation.
- `PSABlock(c, attn_ratio, num_heads, shortcut=True)`: x + attn(x), then x + ffn(x), ffn = 1x1 Conv(c, 2c)
  (SiLU) -> 1x1 Conv(2c, c) without activation.
- `C2PSA(c1, c2 = c1, n, e=0.5)`: c = int(c1 * e); cv1 1x1 Conv(c1, 2c) split in (a, b); b through n
  PSABlocks (heads max(c // 64, 1)); cv2 1x1 Conv(2c, c1) of cat(a, b).

PyTorch keys: `cv1`, `cv2`, `m.I.attn.{qkv,proj,pe}`, `m.I.ffn.{0,1}` (each `.conv`, `.bn`).
Flax: `cv1`, `cv2`, `m_I/attn/{qkv,proj,pe}`, `m_I/ffn_{0,1}`.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings
from . import SameSizeBlock
from .yolo_conv import yolo_conv, yolo_conv_tensors


@dataclasses.dataclass(frozen=True)
class PSABlockSpec(SameSizeBlock):
    """ultralytics `PSABlock(c, attn_ratio, num_heads, shortcut)` (a stride-1 block, channels kept)."""

    features: int
    attn_ratio: float = 0.5
    num_heads: int = 4
    shortcut: bool = True
    activation: str = "silu"  # the ffn's first Conv

    @property
    def in_features(self) -> int:
        return self.features

    @property
    def out_features(self) -> int:
        return self.features

    @property
    def head_dim(self) -> int:
        return self.features // self.num_heads

    @property
    def key_dim(self) -> int:
        return int(self.head_dim * self.attn_ratio)

    @property
    def qkv_features(self) -> int:
        return self.features + 2 * self.num_heads * self.key_dim


    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        if self.num_heads * self.head_dim != self.features:
            raise ValueError(f"PSABlock({self.features}): {self.num_heads} heads do not divide the channels")
        return PSABlock(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c = self.features
        attn, attn_path = tk.join(prefix, "attn"), (*flax_path, "attn")
        yield from yolo_conv_tensors(tk.join(attn, "qkv"), (*attn_path, "qkv"), c, self.qkv_features)
        yield from yolo_conv_tensors(tk.join(attn, "proj"), (*attn_path, "proj"), c, c)
        yield from yolo_conv_tensors(tk.join(attn, "pe"), (*attn_path, "pe"), c, c, 3, depthwise=True)
        yield from yolo_conv_tensors(tk.join(prefix, "ffn.0"), (*flax_path, "ffn_0"), c, 2 * c)
        yield from yolo_conv_tensors(tk.join(prefix, "ffn.1"), (*flax_path, "ffn_1"), 2 * c, c)


class Attention(nn.Module):
    spec: PSABlockSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        batch, height, width, channels = x.shape
        heads, key_dim, head_dim = spec.num_heads, spec.key_dim, spec.head_dim
        qkv = yolo_conv(spec.qkv_features, activation=None, settings=settings, name="qkv")(x, train)
        qkv = qkv.reshape(batch, height * width, heads, 2 * key_dim + head_dim)  # per head: [q, k, v]
        q, k, v = jnp.split(qkv, (key_dim, 2 * key_dim), axis=-1)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (key_dim ** -0.5), k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(logits.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, height, width, channels)
        v_map = v.reshape(batch, height, width, channels)  # channel = head * head_dim + d, as PyTorch's view
        out = out + yolo_conv(channels, 3, activation=None, depthwise=True, settings=settings, name="pe")(v_map, train)
        return yolo_conv(channels, activation=None, settings=settings, name="proj")(out, train)


class PSABlock(nn.Module):
    spec: PSABlockSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        y = Attention(spec, settings, name="attn")(x, train)
        x = x + y if spec.shortcut else y
        y = yolo_conv(2 * spec.features, activation=spec.activation, settings=settings, name="ffn_0")(x, train)
        y = yolo_conv(spec.features, activation=None, settings=settings, name="ffn_1")(y, train)
        return x + y if spec.shortcut else y


@dataclasses.dataclass(frozen=True)
class C2psaSpec(SameSizeBlock):
    """ultralytics `C2PSA(c1, c2, n=1, e=0.5)` (c2 must equal c1)."""

    in_features: int
    out_features: int
    n: int = 1
    e: float = 0.5
    activation: str = "silu"

    def __post_init__(self):
        if self.in_features != self.out_features:
            raise ValueError(f"C2PSA keeps its channels: {self.in_features} -> {self.out_features}")

    @property
    def hidden(self) -> int:
        return int(self.in_features * self.e)

    @property
    def inner_blocks(self) -> tuple[PSABlockSpec, ...]:
        c = self.hidden
        return tuple(PSABlockSpec(c, 0.5, max(c // 64, 1), activation=self.activation) for _ in range(self.n))


    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return C2PSA(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c = self.hidden
        yield from yolo_conv_tensors(tk.join(prefix, "cv1"), (*flax_path, "cv1"), self.in_features, 2 * c)
        for i, block in enumerate(self.inner_blocks):
            yield from block.torch_tensors(tk.join(prefix, f"m.{i}"), (*flax_path, f"m_{i}"))
        yield from yolo_conv_tensors(tk.join(prefix, "cv2"), (*flax_path, "cv2"), 2 * c, self.out_features)


class C2PSA(nn.Module):
    spec: C2psaSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, c = self.spec, self.settings, self.spec.hidden
        a, b = jnp.split(yolo_conv(2 * c, activation=spec.activation, settings=settings, name="cv1")(x, train), 2,
                         axis=-1)
        for i, block in enumerate(spec.inner_blocks):
            b = block.module(settings, f"m_{i}")(b, train)
        return yolo_conv(spec.out_features, activation=spec.activation, settings=settings,
                         name="cv2")(jnp.concatenate([a, b], axis=-1), train)
