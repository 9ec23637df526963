"""Convolutions as the references compute them, in the forms XLA runs fastest, and conv-norm-activation.

Padding is always explicit and symmetric, `dilation * (k - 1) // 2` per side, as in
PyTorch: XLA's 'SAME' pads (0, 1) at stride 2 and would not reproduce the references.
Layer settings (norm eps/momentum, folded or not, compute dtype, depthwise form) travel in
one `LayerSettings` value that the builder hands to every block.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .ops import activation

Dtype = Any

DEPTHWISE_IMPLS = ("auto", "slices", "lax")

# torchvision initialises convs with Kaiming-normal over fan-out and linears with N(0, 0.01).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(0.01)


@dataclasses.dataclass(frozen=True)
class LayerSettings:
    """What every conv and norm of one model shares; blocks take it whole and pass it on.

    `bn_momentum` is PyTorch's (the weight of the new batch statistics); a block whose reference
    uses another eps (a head on a backbone, say) passes `dataclasses.replace(settings, bn_eps=...)`.
    `fold_bn` builds the inference form: no BatchNorm, a bias on the conv before it (see
    `inference.fold_batchnorm`).
    """

    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    fold_bn: bool = False
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"

    def batch_norm(self, train: bool, name: str = "bn") -> nn.BatchNorm:
        # Two-pass variance: the fast E[x^2]-E[x]^2 form can go negative and NaN in training.
        return nn.BatchNorm(use_running_average=not train, momentum=1.0 - self.bn_momentum, epsilon=self.bn_eps,
                            dtype=self.dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name)


def torch_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    pad = dilation * (kernel_size - 1) // 2
    return ((pad, pad), (pad, pad))


def resolve_depthwise_impl(impl: str) -> str:
    """'auto' picks the depthwise form per backend, as measured (BENCHMARKS.md).

    XLA:CPU lowers grouped convolutions 20-40x slower than k*k shifted multiply-adds, and
    differentiates them into a dense [C, k, k, C] convolution: slices there.  On an H100 (bf16
    training, batch 256) the grouped conv is 1.37-1.52x faster than the slices for V2/V3: lax there,
    and on TPUs, which run grouped convolutions natively.
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "slices" if jax.default_backend() == "cpu" else "lax"
    return impl


def _sum_of_slices(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
    kh, kw = kernel.shape[:2]
    batch, height, width, channels = x.shape
    out_h = (height - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width - dilation * (kw - 1) - 1) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dilation, j * dilation, 0)
            limit = (batch, start[1] + (out_h - 1) * stride + 1, start[2] + (out_w - 1) * stride + 1, channels)
            term = lax.slice(x, start, limit, (1, stride, stride, 1)) * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_slices(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
    """Depthwise conv as a sum of k*k strided slices scaled per channel (x already padded).

    The custom VJP only changes how the kernel gradient is computed (see `_depthwise_kernel_grad`).
    """
    return _sum_of_slices(x, kernel, stride, dilation)


def _depthwise_kernel_grad(x: jax.Array, grad: jax.Array, kernel_hw: tuple[int, int], stride: int,
                           dilation: int) -> jax.Array:
    """dkernel[i, j] = sum of x * (grad placed at tap (i, j)'s input positions), over batch and space.

    Autodiff's form, sum(slice_ij(x) * grad), is a reduction over a sliced operand, which XLA:CPU runs
    3x slower than over whole arrays (measured: 204 vs 63 ms for a 3x3 layer at 32x56x56x144).
    """
    (_, height, width, _), (_, out_h, out_w, _) = x.shape, grad.shape
    zero, taps = jnp.zeros((), grad.dtype), []
    for i in range(kernel_hw[0]):
        for j in range(kernel_hw[1]):
            top, left = i * dilation, j * dilation
            placed = lax.pad(grad, zero, [(0, 0, 0), (top, height - top - (out_h - 1) * stride - 1, stride - 1),
                                          (left, width - left - (out_w - 1) * stride - 1, stride - 1), (0, 0, 0)])
            taps.append(jnp.sum(x * placed, axis=(0, 1, 2)))
    return jnp.stack(taps).reshape(*kernel_hw, 1, -1)


def _depthwise_slices_forward(x, kernel, stride, dilation):
    return _sum_of_slices(x, kernel, stride, dilation), (x, kernel)


def _depthwise_slices_backward(stride, dilation, residuals, grad):
    x, kernel = residuals
    _, input_grad = jax.vjp(lambda x: _sum_of_slices(x, kernel, stride, dilation), x)
    return input_grad(grad)[0], _depthwise_kernel_grad(x, grad, kernel.shape[:2], stride, dilation)


depthwise_conv_slices.defvjp(_depthwise_slices_forward, _depthwise_slices_backward)


def depthwise_conv_lax(x: jax.Array, kernel: jax.Array, stride: int, dilation: int) -> jax.Array:
    """Depthwise conv as XLA's grouped convolution (x already padded)."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding="VALID", rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


class DepthwiseConv(nn.Module):
    """Depthwise conv (a bias only in the folded inference form); kernel (k, k, 1, C) whichever form computes it."""

    kernel_size: int
    stride: int = 1
    dilation: int = 1
    impl: str = "auto"
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kernel = self.param("kernel", conv_init, (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        x = jnp.pad(x, ((0, 0), *torch_padding(self.kernel_size, self.dilation), (0, 0)))
        conv = depthwise_conv_slices if resolve_depthwise_impl(self.impl) == "slices" else depthwise_conv_lax
        y = conv(x, kernel, self.stride, self.dilation)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32).astype(self.dtype)
        return y


class PointwiseConv(nn.Module):
    """1x1 convolution as a matrix product over channels; kernel (1, 1, C_in, C_out) like nn.Conv.

    XLA:CPU runs a dot_general markedly faster than the equivalent 1x1 convolution (V2 batch 1:
    8.5 vs 13.4 ms end to end), and every backend differentiates it into plain matmuls.
    """

    features: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    bias_init: Any = nn.initializers.zeros  # a prior-probability constant in detection heads (YOLO)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        y = lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
        return y


def conv2d(features: int, kernel_size: int, stride: int = 1, dilation: int = 1, use_bias: bool = False,
           dtype: Dtype = jnp.float32, name: Optional[str] = None, padding: Optional[int] = None) -> nn.Conv:
    """Dense kxk convolution with PyTorch's symmetric padding (`padding` per side, default
    dilation * (k - 1) // 2); kernel (k, k, C_in, C_out)."""
    pads = torch_padding(kernel_size, dilation) if padding is None else ((padding, padding), (padding, padding))
    return nn.Conv(features, (kernel_size, kernel_size), strides=stride, padding=pads,
                   kernel_dilation=dilation, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                   kernel_init=conv_init, name=name)


class ConvNormAct(nn.Module):
    """Conv (dense kxk, 1x1 as a matmul, or depthwise; no bias) -> BatchNorm -> optional activation.

    With `settings.fold_bn` the BatchNorm is gone and the conv has a bias: the inference form whose
    variables `inference.fold_batchnorm` computes.  Submodules are named 'conv' and 'bn': folding
    finds its pairs by these names.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    depthwise: bool = False
    act: Optional[str] = None
    settings: LayerSettings = LayerSettings()
    # Symmetric padding per side, for references that do not pad dilation * (k - 1) // 2: ultralytics' autopad
    # is k // 2, one more for an even kernel (Conv(c1, c2, 4, 2) pads 2).  None = the default.
    padding: Optional[int] = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        settings, bias = self.settings, self.settings.fold_bn
        default_padding = self.dilation * (self.kernel_size - 1) // 2
        padding = None if self.padding in (None, default_padding) else self.padding
        if self.depthwise:
            if self.features != x.shape[-1]:
                raise ValueError(f"depthwise conv keeps channels: {x.shape[-1]} in, {self.features} asked")
            if padding is not None:
                raise NotImplementedError(f"depthwise conv with padding {padding} (only {default_padding})")
            x = DepthwiseConv(self.kernel_size, self.stride, self.dilation, settings.depthwise_impl, bias,
                              settings.dtype, name="conv")(x)
        elif self.kernel_size == 1 and self.stride == 1 and padding is None:
            x = PointwiseConv(self.features, bias, settings.dtype, name="conv")(x)
        else:
            x = conv2d(self.features, self.kernel_size, self.stride, self.dilation, bias, settings.dtype, name="conv",
                       padding=padding)(x)
        if not settings.fold_bn:
            x = settings.batch_norm(train)(x)
        return activation(self.act)(x)
