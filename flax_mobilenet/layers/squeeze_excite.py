"""Squeeze-excite channel gates."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .ops import activation


class SqueezeExcite(nn.Module):
    """pool -> 1x1 conv (bias) -> act -> 1x1 conv (bias) -> gate, times the input (MobileNetV3: ReLU, hard-sigmoid)."""

    squeeze_features: int
    act: str = "relu"
    gate: str = "hard_sigmoid"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        scale = nn.Dense(self.squeeze_features, dtype=self.dtype, param_dtype=jnp.float32, name="reduce")(scale)
        scale = activation(self.act)(scale)
        scale = nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32, name="expand")(scale)
        return x * activation(self.gate)(scale)
