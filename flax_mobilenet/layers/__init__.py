"""Layers: convolutions (both depthwise forms), norms, squeeze-excite, activations, PyTorch key helpers."""
from .conv import (DEPTHWISE_IMPLS, ConvNormAct, DepthwiseConv, LayerSettings, PointwiseConv, conv2d,
                   depthwise_conv_lax, depthwise_conv_slices, resolve_depthwise_impl, torch_padding)
from .ops import ACTIVATIONS, activation, channel_shuffle, make_divisible
from .squeeze_excite import SqueezeExcite

__all__ = ["ACTIVATIONS", "DEPTHWISE_IMPLS", "ConvNormAct", "DepthwiseConv", "LayerSettings", "PointwiseConv",
           "SqueezeExcite", "activation", "channel_shuffle", "conv2d", "depthwise_conv_lax", "depthwise_conv_slices",
           "make_divisible", "resolve_depthwise_impl", "torch_padding"]
