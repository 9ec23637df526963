"""Seed 000's `StemBlock(c1, c2, k=3, s=2)` (PeleeNet-style stem), stride 2 * s overall:

stem_1 Conv(c1, c2, k, s) -> [stem_2a Conv(c2, c2 // 2, 1) -> stem_2b Conv(c2 // 2, c2, 3, 2, padding 1)]
                          || stem_2p MaxPool2d(2, 2, ceil_mode=True)
-> cat(2b, 2p) -> stem_3 Conv(2 * c2, c2, 1).  `Conv` is ultralytics'/yolov5's conv-BN-SiLU (padding k // 2).
ceil_mode on an odd size takes a last window that hangs over the edge: here a -inf row/column.
PyTorch keys `stem_1`, `stem_2a`, `stem_2b`, `stem_3` (`.conv`, `.bn`); Flax the same names.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings
from .pooling import max_pool
from .yolo_conv import yolo_conv, yolo_conv_tensors


def max_pool_2x2_ceil(x: jax.Array) -> jax.Array:
    """MaxPool2d(2, 2, ceil_mode=True) on NHWC: an odd height/width gets a last, one-wide window."""
    pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
    return max_pool(x, 2, 2, ((0, pad_h), (0, pad_w)))


@dataclasses.dataclass(frozen=True)
class StemBlockSpec:
    in_features: int
    out_features: int
    kernel_size: int = 3
    conv_stride: int = 2
    activation: str = "silu"

    @property
    def stride(self) -> int:
        return 2 * self.conv_stride

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return StemBlock(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c1, c2 = self.in_features, self.out_features
        for name, c_in, c_out, kernel in (("stem_1", c1, c2, self.kernel_size), ("stem_2a", c2, c2 // 2, 1),
                                          ("stem_2b", c2 // 2, c2, 3), ("stem_3", 2 * c2, c2, 1)):
            yield from yolo_conv_tensors(tk.join(prefix, name), (*flax_path, name), c_in, c_out, kernel)


class StemBlock(nn.Module):
    spec: StemBlockSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, c2, act = self.spec, self.settings, self.spec.out_features, self.spec.activation
        x = yolo_conv(c2, spec.kernel_size, spec.conv_stride, act, settings=settings, name="stem_1")(x, train)
        y = yolo_conv(c2 // 2, 1, 1, act, settings=settings, name="stem_2a")(x, train)
        y = yolo_conv(c2, 3, 2, act, settings=settings, name="stem_2b", padding=1)(y, train)
        pooled = max_pool_2x2_ceil(x)
        return yolo_conv(c2, 1, 1, act, settings=settings, name="stem_3")(jnp.concatenate([y, pooled], axis=-1), train)
