"""Bilinear resize exact to PyTorch's `F.interpolate(mode='bilinear', align_corners=False)` (given a size).

`jax.image.resize(..., 'bilinear')` agrees when upsampling but antialiases when downsampling, which
PyTorch's interpolate does not; this form follows PyTorch in both directions: half-pixel centers,
source coordinates clamped at 0, the last pixel repeated past the edge, and the two lerps done in
PyTorch's order (width, then height).  Indices and weights are computed in float32 at trace time.

The resize is one primitive, `resize_bilinear_p`: XLA computes it as the two gathers and lerps above (lowered
through `mlir.lower_fun`; linear, so its JVP is itself and its transpose that of the lerps), and the ONNX export
lowers it to one ONNX `Resize` (linear, half_pixel: `export/onnx_resize.py`), which ONNX Runtime runs 3x
faster than the gathers on LR-ASPP's 65x65 -> 520x520 logits.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir


@functools.lru_cache(maxsize=None)
def source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lambda0, lambda1) per output pixel, as aten's `compute_source_index_and_lambda`."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                        np.float32(0))
    i0 = np.minimum(source.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lambda1 = np.clip(source - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return i0, i1, (np.float32(1) - lambda1).astype(np.float32), lambda1


def _lerp(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    i0, i1, lambda0, lambda1 = source_indices(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    lambda0, lambda1 = (jnp.asarray(w.reshape(shape), x.dtype) for w in (lambda0, lambda1))
    return jnp.take(x, i0, axis=axis) * lambda0 + jnp.take(x, i1, axis=axis) * lambda1


def _resize_lerps(x: jax.Array, *, size: tuple[int, int]) -> jax.Array:
    height, width = size
    if x.shape[2] != width:
        x = _lerp(x, 2, width)
    if x.shape[1] != height:
        x = _lerp(x, 1, height)
    return x


def _transpose(cotangent: jax.Array, x: object, *, size: tuple[int, int]) -> list[jax.Array]:
    aval = x.aval
    return list(jax.linear_transpose(functools.partial(_resize_lerps, size=size),
                                     jax.ShapeDtypeStruct(aval.shape, aval.dtype))(cotangent))


def _batched(args: tuple[jax.Array], dims: tuple[int], *, size: tuple[int, int]) -> tuple[jax.Array, int]:
    x = jnp.moveaxis(args[0], dims[0], 0)  # (vmapped, N, H, W, C) -> one batch of N * vmapped images
    out = resize_bilinear_p.bind(x.reshape(-1, *x.shape[2:]), size=size)
    return out.reshape(*x.shape[:2], *out.shape[1:]), 0


resize_bilinear_p = Primitive("flax_mobilenet_resize_bilinear")
resize_bilinear_p.def_impl(_resize_lerps)
resize_bilinear_p.def_abstract_eval(
    lambda x, *, size: jax.core.ShapedArray((x.shape[0], *size, x.shape[3]), x.dtype))
mlir.register_lowering(resize_bilinear_p, mlir.lower_fun(_resize_lerps, multiple_results=False))
ad.deflinear2(resize_bilinear_p, _transpose)
batching.primitive_batchers[resize_bilinear_p] = _batched


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """NHWC `x` resized to `size` = (H, W) like torch's bilinear interpolate with align_corners=False."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[1:3]) == size:
        return x
    return resize_bilinear_p.bind(jnp.asarray(x), size=size)
