"""Multi-query attention over a 2-D feature map (MobileNetV4's hybrid blocks, timm `MultiQueryAttention2d`).

Every query head attends to one shared key and one shared value head; keys and values may be computed
on a map downsampled by a strided depthwise conv + BatchNorm (`kv_stride`), which cuts the attention cost
by kv_stride^2 at the high-resolution stage.  Projections are 1x1 convs without bias.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .conv import ConvNormAct, LayerSettings, PointwiseConv


class MultiQueryAttention2d(nn.Module):
    """NHWC in, NHWC out: query heads x `head_dim`, one key/value head of `head_dim` (MNV4 uses one size for both).

    Submodules: 'query', 'key', 'value', 'output' (1x1 convs) and, with `kv_stride` > 1, 'key_down' and
    'value_down' (depthwise conv + BN pairs, which BN folding folds).
    """

    num_heads: int
    head_dim: int
    out_features: int
    kv_stride: int = 1
    dw_kernel_size: int = 3
    settings: LayerSettings = LayerSettings()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        settings = self.settings
        batch, height, width, channels = x.shape

        def key_or_value(name: str) -> jax.Array:
            y = x
            if self.kv_stride > 1:
                y = ConvNormAct(channels, self.dw_kernel_size, self.kv_stride, depthwise=True, settings=settings,
                                name=f"{name}_down")(y, train)
            y = PointwiseConv(self.head_dim, dtype=settings.dtype, name=name)(y)
            return y.reshape(batch, -1, self.head_dim)  # (B, S, D): one head, shared by every query head

        query = PointwiseConv(self.num_heads * self.head_dim, dtype=settings.dtype, name="query")(x)
        query = query.reshape(batch, height * width, self.num_heads, self.head_dim)  # channel = head * D + d, as timm
        # An einsum softmax, not jax.nn.dot_product_attention (same numbers to 3e-7): XLA:CPU runs it 25-35% faster
        # at MNV4's shapes (B=1, 4 heads x 64, 576 queries x 144 keys: 1.2 vs 1.8 ms; 196 x 196: 0.67 vs 0.90 ms).
        logits = jnp.einsum("blhd,bsd->blhs", query, key_or_value("key")) * self.head_dim ** -0.5
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(logits.dtype)
        out = jnp.einsum("blhs,bsd->blhd", weights, key_or_value("value"))
        out = out.reshape(batch, height, width, self.num_heads * self.head_dim)
        return PointwiseConv(self.out_features, dtype=settings.dtype, name="output")(out)
