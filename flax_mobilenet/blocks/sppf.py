"""SPPF (spatial pyramid pooling, fast; ultralytics and yolov5 `SPPF(c1, c2, k=5)`).

cv1 1x1 Conv(c1, c1 // 2) -> `n` (3) chained MaxPool2d(k, stride 1, padding k // 2) -> cat of the n + 1 maps
-> cv2 1x1 Conv((n + 1) * c1 // 2, c2) (+ the input where `shortcut` and c1 == c2).  PyTorch's max-pool
padding acts as -inf, as here.  cv1's activation: ultralytics 8.4's module default is none (YOLO26), but
its `parse_model` activates it (SiLU) for YAML rows of up to 3 args (v5u/v8/v11) and yolov5's always is:
the spec's default is SiLU.  PyTorch keys `cv1`, `cv2` (`.conv`, `.bn`); Flax `cv1`, `cv2`.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings
from . import SameSizeBlock
from .pooling import max_pool
from .yolo_conv import yolo_conv, yolo_conv_tensors


@dataclasses.dataclass(frozen=True)
class SppfSpec(SameSizeBlock):
    in_features: int
    out_features: int
    kernel_size: int = 5
    n: int = 3
    shortcut: bool = False
    cv1_activation: Optional[str] = "silu"
    activation: str = "silu"  # cv2's

    @property
    def hidden(self) -> int:
        return self.in_features // 2


    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return SPPF(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        yield from yolo_conv_tensors(tk.join(prefix, "cv1"), (*flax_path, "cv1"), self.in_features, self.hidden)
        yield from yolo_conv_tensors(tk.join(prefix, "cv2"), (*flax_path, "cv2"), self.hidden * (self.n + 1),
                                     self.out_features)


class SPPF(nn.Module):
    spec: SppfSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings = self.spec, self.settings
        ys = [yolo_conv(spec.hidden, activation=spec.cv1_activation, settings=settings, name="cv1")(x, train)]
        for _ in range(spec.n):
            ys.append(max_pool(ys[-1], spec.kernel_size, 1))  # padding k // 2, as -inf
        y = yolo_conv(spec.out_features, activation=spec.activation, settings=settings,
                      name="cv2")(jnp.concatenate(ys, axis=-1), train)
        return y + x if spec.shortcut and spec.in_features == spec.out_features else y
