"""YOLO's conv block: ultralytics/yolov5 `Conv` = Conv2d(k, s, padding, no bias) -> BatchNorm -> SiLU.

Covers `Conv(c1, c2, k, s, p)` (padding `p`, default ultralytics' autopad k // 2: for an even kernel that is
one more than PyTorch-style (k - 1) // 2), `DWConv` in its depthwise case (groups = gcd(c1, c2) = c1 = c2;
`dwconv_spec`) and seed 000's `conv_bn_hswish` (3x3, padding 1, hard-swish; `conv_bn_hswish_spec`).
PyTorch keys: `PREFIX.conv.weight`, `PREFIX.bn.*`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import flax.linen as nn

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings


@dataclasses.dataclass(frozen=True)
class YoloConvSpec:
    in_features: int
    out_features: int
    kernel_size: int = 1
    conv_stride: int = 1
    padding: Optional[int] = None  # per side; None = ultralytics' autopad, kernel_size // 2
    depthwise: bool = False  # groups = channels (DWConv with c1 == c2; attention's positional encoding)
    activation: Optional[str] = "silu"  # None = `act=False`; any name of layers.ops.ACTIVATIONS
    torch_names: tuple[str, str] = ("conv", "bn")

    def __post_init__(self):
        if self.depthwise and self.in_features != self.out_features:
            raise ValueError(f"a depthwise conv keeps its channels: {self.in_features} -> {self.out_features}")

    @property
    def resolved_padding(self) -> int:
        return self.kernel_size // 2 if self.padding is None else self.padding

    @property
    def stride(self) -> int:
        return self.conv_stride

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return ConvNormAct(self.out_features, self.kernel_size, self.conv_stride, depthwise=self.depthwise,
                           act=self.activation, settings=settings, padding=self.resolved_padding, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        conv, norm = (tk.join(prefix, n) for n in self.torch_names)
        yield from tk.conv_norm(flax_path, conv, norm, self.in_features, self.out_features, self.kernel_size,
                                depthwise=self.depthwise)


def dwconv_spec(in_features: int, out_features: int, kernel_size: int = 1, stride: int = 1,
                activation: Optional[str] = "silu") -> YoloConvSpec:
    """ultralytics `DWConv(c1, c2, k, s)`: groups = gcd(c1, c2); only the depthwise case (c1 == c2) is supported."""
    groups = math.gcd(in_features, out_features)
    if groups != in_features or in_features != out_features:
        raise NotImplementedError(f"DWConv({in_features}, {out_features}): grouped conv with {groups} groups "
                                  "(only c1 == c2, depthwise, is supported)")
    return YoloConvSpec(in_features, out_features, kernel_size, stride, depthwise=True, activation=activation)


def conv_bn_hswish_spec(in_features: int, out_features: int, stride: int) -> YoloConvSpec:
    """Seed 000's `conv_bn_hswish(c1, c2, stride)`: 3x3 conv (padding 1, no bias) -> BN -> hard-swish."""
    return YoloConvSpec(in_features, out_features, 3, stride, padding=1, activation="hard_swish")


def yolo_conv(features: int, kernel_size: int = 1, stride: int = 1, activation: Optional[str] = "silu", *,
              settings: LayerSettings, name: str, depthwise: bool = False,
              padding: Optional[int] = None) -> ConvNormAct:
    """A `Conv` inside another YOLO block (Flax submodules 'conv', 'bn'), padding k // 2 unless given."""
    return ConvNormAct(features, kernel_size, stride, depthwise=depthwise, act=activation, settings=settings,
                       padding=kernel_size // 2 if padding is None else padding, name=name)


def yolo_conv_tensors(prefix: str, flax_path: tk.FlaxPath, in_features: int, out_features: int,
                      kernel_size: int = 1, depthwise: bool = False) -> Iterator[tk.TensorMapping]:
    """The tensors of a `Conv` at PyTorch module path `prefix` (`.conv`, `.bn`) and Flax path `flax_path`."""
    yield from tk.conv_norm(flax_path, tk.join(prefix, "conv"), tk.join(prefix, "bn"), in_features, out_features,
                            kernel_size, depthwise=depthwise)
