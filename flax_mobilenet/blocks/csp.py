"""YOLO's CSP blocks (ultralytics `nn/modules/block.py`; yolov5's `C3` is the same module):

- `BottleneckSpec` = `Bottleneck(c1, c2, shortcut, k=(k1, k2), e)`: cv1 Conv(c1, int(c2 * e), k1) -> cv2
  Conv(., c2, k2); adds the input iff shortcut and c1 == c2.
- `C3Spec` = `C3(c1, c2, n, shortcut=True, e=0.5)`: c_ = int(c2 * e); cv1, cv2 1x1 Conv(c1, c_); m = n
  Bottleneck(c_, c_, k=(1, 3), e=1.0) on cv1's path; cv3 1x1 Conv(2c_, c2) of cat(m(cv1 x), cv2 x).
  `C3kSpec` = `C3k(c1, c2, n, shortcut, e, k=3)`: the same with (k, k) bottlenecks.
- `C2fSpec` = `C2f(c1, c2, n, shortcut=False, e=0.5)`: c = int(c2 * e); cv1 1x1 Conv(c1, 2c) split in two;
  each of n Bottleneck(c, c, k=(3, 3), e=1.0) takes the last piece, appended; cv2 1x1 Conv((2+n)c, c2).
- `C3k2Spec` = `C3k2(c1, c2, n, c3k=False, e=0.5, attn=False, shortcut=True)`: a C2f whose inner blocks are
  Bottleneck(c, c, shortcut) (k=(3, 3), e=0.5: NOT C2f's e=1.0), or C3k(c, c, n=2, shortcut) (c3k), or
  Sequential(Bottleneck(c, c, shortcut), PSABlock(c, 0.5, max(c // 64, 1))) (attn, YOLO26).

PyTorch keys: `cv1`, `cv2`, `cv3`, `m.I.cv1` ... (attn: `m.I.0.*`, `m.I.1.*`); Flax: `cv1`, `cv2`, `cv3`,
`m_I/cv1` ... (attn: `m_I/layers_0/*`, `m_I/layers_1/*`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings
from . import SameSizeBlock
from .psa import PSABlockSpec
from .yolo_conv import yolo_conv, yolo_conv_tensors


@dataclasses.dataclass(frozen=True)
class BottleneckSpec(SameSizeBlock):
    in_features: int
    out_features: int
    shortcut: bool = True
    kernels: tuple[int, int] = (3, 3)
    e: float = 0.5
    activation: str = "silu"

    @property
    def hidden(self) -> int:
        return int(self.out_features * self.e)

    @property
    def residual(self) -> bool:
        return self.shortcut and self.in_features == self.out_features

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return Bottleneck(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        yield from yolo_conv_tensors(tk.join(prefix, "cv1"), (*flax_path, "cv1"), self.in_features, self.hidden,
                                     self.kernels[0])
        yield from yolo_conv_tensors(tk.join(prefix, "cv2"), (*flax_path, "cv2"), self.hidden, self.out_features,
                                     self.kernels[1])


class Bottleneck(nn.Module):
    spec: BottleneckSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        y = yolo_conv(spec.hidden, spec.kernels[0], activation=spec.activation, settings=settings, name="cv1")(x, train)
        y = yolo_conv(spec.out_features, spec.kernels[1], activation=spec.activation, settings=settings,
                      name="cv2")(y, train)
        return x + y if spec.residual else y


@dataclasses.dataclass(frozen=True)
class SequenceSpec(SameSizeBlock):
    """Blocks in a row, as an nn.Sequential (PyTorch `PREFIX.J`, Flax `layers_J`)."""

    blocks: tuple[Any, ...]

    @property
    def in_features(self) -> int:
        return self.blocks[0].in_features

    @property
    def out_features(self) -> int:
        return self.blocks[-1].out_features

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return Sequence(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        for j, block in enumerate(self.blocks):
            yield from block.torch_tensors(tk.join(prefix, str(j)), (*flax_path, f"layers_{j}"))


class Sequence(nn.Module):
    spec: SequenceSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for j, block in enumerate(self.spec.blocks):
            x = block.module(self.settings, f"layers_{j}")(x, train)
        return x


@dataclasses.dataclass(frozen=True)
class C3Spec(SameSizeBlock):
    in_features: int
    out_features: int
    n: int = 1
    shortcut: bool = True
    e: float = 0.5
    bottleneck_kernels: tuple[int, int] = (1, 3)
    activation: str = "silu"

    @property
    def hidden(self) -> int:
        return int(self.out_features * self.e)

    @property
    def inner_blocks(self) -> tuple[BottleneckSpec, ...]:
        c = self.hidden
        return tuple(BottleneckSpec(c, c, self.shortcut, self.bottleneck_kernels, 1.0, self.activation)
                     for _ in range(self.n))

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return C3(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c = self.hidden
        yield from yolo_conv_tensors(tk.join(prefix, "cv1"), (*flax_path, "cv1"), self.in_features, c)
        yield from yolo_conv_tensors(tk.join(prefix, "cv2"), (*flax_path, "cv2"), self.in_features, c)
        yield from yolo_conv_tensors(tk.join(prefix, "cv3"), (*flax_path, "cv3"), 2 * c, self.out_features)
        for i, block in enumerate(self.inner_blocks):
            yield from block.torch_tensors(tk.join(prefix, f"m.{i}"), (*flax_path, f"m_{i}"))


@dataclasses.dataclass(frozen=True)
class C3kSpec(C3Spec):
    """ultralytics `C3k(c1, c2, n, shortcut, e, k=3)`: a C3 whose bottlenecks are (k, k)."""

    bottleneck_kernels: tuple[int, int] = (3, 3)


class C3(nn.Module):
    spec: C3Spec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, c = self.spec, self.settings, self.spec.hidden
        y = yolo_conv(c, activation=spec.activation, settings=settings, name="cv1")(x, train)
        for i, block in enumerate(spec.inner_blocks):
            y = block.module(settings, f"m_{i}")(y, train)
        z = yolo_conv(c, activation=spec.activation, settings=settings, name="cv2")(x, train)
        return yolo_conv(spec.out_features, activation=spec.activation, settings=settings,
                         name="cv3")(jnp.concatenate([y, z], axis=-1), train)


class _C2fTensors:
    """cv1 (c1 -> 2c), the inner blocks, cv2 ((2 + n)c -> c2): shared by C2f and C3k2."""

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return C2f(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c, n = self.hidden, self.n
        yield from yolo_conv_tensors(tk.join(prefix, "cv1"), (*flax_path, "cv1"), self.in_features, 2 * c)
        yield from yolo_conv_tensors(tk.join(prefix, "cv2"), (*flax_path, "cv2"), (2 + n) * c, self.out_features)
        for i, block in enumerate(self.inner_blocks):
            yield from block.torch_tensors(tk.join(prefix, f"m.{i}"), (*flax_path, f"m_{i}"))


@dataclasses.dataclass(frozen=True)
class C2fSpec(_C2fTensors, SameSizeBlock):
    in_features: int
    out_features: int
    n: int = 1
    shortcut: bool = False
    e: float = 0.5
    activation: str = "silu"

    @property
    def hidden(self) -> int:
        return int(self.out_features * self.e)

    @property
    def inner_blocks(self) -> tuple[BottleneckSpec, ...]:
        c = self.hidden
        return tuple(BottleneckSpec(c, c, self.shortcut, (3, 3), 1.0, self.activation) for _ in range(self.n))


@dataclasses.dataclass(frozen=True)
class C3k2Spec(_C2fTensors, SameSizeBlock):
    in_features: int
    out_features: int
    n: int = 1
    c3k: bool = False
    e: float = 0.5
    attn: bool = False
    shortcut: bool = True
    activation: str = "silu"

    @property
    def hidden(self) -> int:
        return int(self.out_features * self.e)

    @property
    def inner_blocks(self) -> tuple[Any, ...]:
        c, act = self.hidden, self.activation
        if self.attn:
            block = SequenceSpec((BottleneckSpec(c, c, self.shortcut, activation=act),
                                  PSABlockSpec(c, 0.5, max(c // 64, 1), activation=act)))
        elif self.c3k:
            block = C3kSpec(c, c, 2, self.shortcut, activation=act)
        else:
            block = BottleneckSpec(c, c, self.shortcut, activation=act)  # k (3, 3), e 0.5
        return (block,) * self.n


class C2f(nn.Module):
    spec: Any  # C2fSpec | C3k2Spec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, c = self.spec, self.settings, self.spec.hidden
        ys = list(jnp.split(yolo_conv(2 * c, activation=spec.activation, settings=settings, name="cv1")(x, train), 2,
                            axis=-1))
        for i, block in enumerate(spec.inner_blocks):
            ys.append(block.module(settings, f"m_{i}")(ys[-1], train))
        return yolo_conv(spec.out_features, activation=spec.activation, settings=settings,
                         name="cv2")(jnp.concatenate(ys, axis=-1), train)
