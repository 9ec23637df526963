"""A parameter-free max-pool layer: ShuffleNetV2's 3x3 stride-2 pool after its stem."""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings, torch_padding


def max_pool(x: jax.Array, kernel_size: int, stride: int) -> jax.Array:
    """NHWC max pool as torch.nn.MaxPool2d(k, stride, padding=(k - 1) // 2): the padding is -inf, so a
    border window's maximum is taken over real pixels only, and the output size is floor((H + 2p - k) / s) + 1."""
    pad = torch_padding(kernel_size)
    # A Python -inf with lax.max makes this reduce_window_max, which has a gradient; an array init value
    # would make it a generic reduce_window, which cannot be differentiated.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, kernel_size, kernel_size, 1),
                             (1, stride, stride, 1), ((0, 0), *pad, (0, 0)))


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
