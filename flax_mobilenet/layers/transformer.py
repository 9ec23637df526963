"""Pre-norm transformer encoder blocks on token sequences.

`TransformerBlock` (timm's `vision_transformer.Block`, MobileViT v1): x + proj(attention(LayerNorm(x))),
then x + fc2(act(fc1(LayerNorm(x)))); attention goes through `jax.nn.dot_product_attention`, which
picks the backend's fused kernel where it has one.  `LinearTransformerBlock` (MobileViT v2): the same
shape with GroupNorm(1) and separable linear-complexity self-attention over (batch, P, N, C) tokens.
Norms compute their variance in two passes, as torch does.
"""
from __future__ import annotations

from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import torch_keys as tk
from .conv import dense_init
from .ops import activation

Dtype = Any
TORCH_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's (and GroupNorm's) default, which timm's MobileViT blocks keep


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


def group_norm1(eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    """timm's GroupNorm1: one group, statistics over every axis but the batch, affine per channel."""
    return nn.GroupNorm(num_groups=1, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                        name=name)


def dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=dense_init, name=name)


class MultiHeadAttention(nn.Module):
    """Self-attention with one fused qkv Linear (with bias) and an output Linear, as timm's `Attention`.

    The qkv output splits as (3, heads, head_dim), timm's order; scores are scaled by head_dim ** -0.5.
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        *batch, tokens, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {self.num_heads} heads")
        qkv = dense(3 * dim, self.dtype, "qkv")(x).reshape(*batch, tokens, 3, self.num_heads, dim // self.num_heads)
        # dot_product_attention takes exactly (batch, tokens, heads, head_dim): leading axes merge into one.
        q, k, v = (qkv[..., i, :, :].reshape(-1, tokens, self.num_heads, dim // self.num_heads) for i in range(3))
        out = jax.nn.dot_product_attention(q, k, v)
        return dense(dim, self.dtype, "proj")(out.reshape(*batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm attention and MLP (Linear -> act -> Linear), each with a residual."""

    num_heads: int
    mlp_features: int
    act: str = "gelu"
    eps: float = TORCH_LAYER_NORM_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layer_norm(self.eps, self.dtype, "norm1")(x)
        x = x + MultiHeadAttention(self.num_heads, self.dtype, name="attn")(y)
        return x + mlp(layer_norm(self.eps, self.dtype, "norm2")(x), self.mlp_features, self.act, self.dtype)


def mlp(x: jax.Array, hidden: int, act: str, dtype: Dtype) -> jax.Array:
    """fc1 -> act -> fc2 (both with bias), created in the calling module's compact scope."""
    return dense(x.shape[-1], dtype, "fc2")(activation(act)(dense(hidden, dtype, "fc1")(x)))


class LinearSelfAttention(nn.Module):
    """MobileViT v2's separable self-attention on (batch, P, N, C): one context vector per pixel position P.

    qkv_proj gives 1 + 2C channels: a score per token (softmax over the N patches), keys and values;
    out = out_proj(relu(values) * sum_N(keys * scores)).
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        qkv = dense(1 + 2 * dim, self.dtype, "qkv_proj")(x)
        scores = jax.nn.softmax(qkv[..., :1], axis=-2)
        context = jnp.sum(qkv[..., 1:1 + dim] * scores, axis=-2, keepdims=True)
        return dense(dim, self.dtype, "out_proj")(nn.relu(qkv[..., 1 + dim:]) * context)


class LinearTransformerBlock(nn.Module):
    """Pre-GroupNorm(1) linear attention and MLP, each with a residual (timm `LinearTransformerBlock`)."""

    mlp_features: int
    act: str = "silu"
    eps: float = TORCH_LAYER_NORM_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + LinearSelfAttention(self.dtype, name="attn")(group_norm1(self.eps, self.dtype, "norm1")(x))
        return x + mlp(group_norm1(self.eps, self.dtype, "norm2")(x), self.mlp_features, self.act, self.dtype)


def transformer_block_tensors(flax_path: tk.FlaxPath, key: str, dim: int,
                              mlp_features: int) -> Iterator[tk.TensorMapping]:
    """timm's Block under `key`: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2."""
    yield from tk.layer_norm((*flax_path, "norm1"), tk.join(key, "norm1"), dim)
    yield from tk.dense((*flax_path, "attn", "qkv"), tk.join(key, "attn.qkv"), dim, 3 * dim)
    yield from tk.dense((*flax_path, "attn", "proj"), tk.join(key, "attn.proj"), dim, dim)
    yield from tk.layer_norm((*flax_path, "norm2"), tk.join(key, "norm2"), dim)
    yield from tk.dense((*flax_path, "fc1"), tk.join(key, "mlp.fc1"), dim, mlp_features)
    yield from tk.dense((*flax_path, "fc2"), tk.join(key, "mlp.fc2"), mlp_features, dim)


def linear_transformer_block_tensors(flax_path: tk.FlaxPath, key: str, dim: int,
                                     mlp_features: int) -> Iterator[tk.TensorMapping]:
    """timm's LinearTransformerBlock under `key`: GroupNorms norm1/norm2, 1x1 convs attn.qkv_proj/out_proj, mlp."""
    yield from tk.layer_norm((*flax_path, "norm1"), tk.join(key, "norm1"), dim)  # same tensors as a LayerNorm
    yield from tk.dense((*flax_path, "attn", "qkv_proj"), tk.join(key, "attn.qkv_proj"), dim, 1 + 2 * dim,
                        as_conv1x1=True)
    yield from tk.dense((*flax_path, "attn", "out_proj"), tk.join(key, "attn.out_proj"), dim, dim, as_conv1x1=True)
    yield from tk.layer_norm((*flax_path, "norm2"), tk.join(key, "norm2"), dim)
    yield from tk.dense((*flax_path, "fc1"), tk.join(key, "mlp.fc1"), dim, mlp_features, as_conv1x1=True)
    yield from tk.dense((*flax_path, "fc2"), tk.join(key, "mlp.fc2"), mlp_features, dim, as_conv1x1=True)
