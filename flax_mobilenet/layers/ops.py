"""Activations by name, channel rounding and channel shuffle: the parameter-free pieces every family uses."""
from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "hard_swish": jax.nn.hard_swish,  # x * relu6(x + 3) / 6, as torch.nn.Hardswish
    "hard_sigmoid": jax.nn.hard_sigmoid,  # relu6(x + 3) / 6, as torch.nn.Hardsigmoid
    "silu": jax.nn.silu,  # torch.nn.SiLU (timm's 'swish')
    "sigmoid": jax.nn.sigmoid,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU's default is the exact erf form
}


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 1 - `round_limit` of it."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def activation(name: Optional[str]) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name` (None: identity)."""
    if name is None:
        return lambda x: x
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's shuffle on NHWC: channels viewed as (groups, C/groups), transposed, flattened."""
    *batch, channels = x.shape
    x = x.reshape(*batch, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*batch, channels)
