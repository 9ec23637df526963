"""A parameter-free max-pool layer: ShuffleNetV2's 3x3 stride-2 pool after its stem."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings, torch_padding


def max_pool(x: jax.Array, kernel_size: int, stride: int,
             padding: Optional[tuple[tuple[int, int], tuple[int, int]]] = None) -> jax.Array:
    """NHWC max pool as torch.nn.MaxPool2d(k, stride, padding=(k - 1) // 2): the padding is -inf, so a
    border window's maximum is taken over real pixels only, and the output size is floor((H + 2p - k) / s) + 1.
    `padding` ((top, bottom), (left, right)) replaces it (ceil_mode's extra bottom/right window, say).

    Written as a -inf pad and flax's 2-D `max_pool` (XLA's reduce_window_max, which has a gradient): the ONNX
    export maps that to one 2-D MaxPool (jax2onnx turns a raw NHWC reduce_window into a MaxPool over four axes,
    which ONNX Runtime rejects)."""
    pad = torch_padding(kernel_size) if padding is None else padding
    if any(p for side in pad for p in side):
        x = jnp.pad(x, ((0, 0), *pad, (0, 0)), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=(kernel_size, kernel_size), strides=(stride, stride), padding="VALID")


@dataclasses.dataclass(frozen=True)
class MaxPoolSpec:
    in_features: int
    kernel_size: int = 3
    pool_stride: int = 2

    @property
    def out_features(self) -> int:
        return self.in_features

    @property
    def stride(self) -> int:
        return self.pool_stride

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return MaxPool(self.kernel_size, self.pool_stride, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        yield from ()  # nn.MaxPool2d holds no tensors


class MaxPool(nn.Module):
    """`max_pool` as a layer; it has no variables, so its layer is absent from the variable tree."""

    kernel_size: int
    stride: int

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return max_pool(x, self.kernel_size, self.stride)
