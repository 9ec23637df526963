"""A lone conv -> BatchNorm -> activation: the stems and final 1x1 convs of every family."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import flax.linen as nn

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings


@dataclasses.dataclass(frozen=True)
class ConvNormActSpec:
    in_features: int
    out_features: int
    kernel_size: int = 1
    conv_stride: int = 1
    activation: Optional[str] = None
    # Module names of the conv and the norm under the layer's prefix: torchvision's Conv2dNormActivation
    # is a Sequential ('0', '1'); timm names them ('conv', 'bn1') or puts them at the top level.
    torch_names: tuple[str, str] = ("0", "1")

    @property
    def stride(self) -> int:
        return self.conv_stride

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return ConvNormAct(self.out_features, self.kernel_size, self.conv_stride, act=self.activation,
                           settings=settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        conv, norm = (tk.join(prefix, n) for n in self.torch_names)
        yield from tk.conv_norm(flax_path, conv, norm, self.in_features, self.out_features, self.kernel_size)
