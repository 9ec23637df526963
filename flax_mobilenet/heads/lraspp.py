"""Lite R-ASPP (torchvision `LRASPPHead`, MobileNetV3 paper): a low-stride and a high-stride tap.

cbr = 1x1 conv-BN-ReLU on `high`, gated by scale = sigmoid(1x1 conv(global average of `high`));
upsampled (bilinear) to `low`'s size; logits = low_classifier(low) + high_classifier(gated).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings, PointwiseConv
from . import channels_of
from .resize import resize_bilinear


@dataclasses.dataclass(frozen=True)
class LrasppSpec:
    task: ClassVar[str] = "segmentation"
    low_features: int
    high_features: int
    low_tap: str = "features.4"  # torchvision: the first block at output stride 8 (C2)
    high_tap: str = "features.16"  # torchvision: the last layer (C5)
    inter_features: int = 128
    torch_prefix: str = "classifier"
    bn_eps: float = 1e-5  # the head's own BatchNorm (PyTorch defaults), not the backbone's
    bn_momentum: float = 0.1

    @classmethod
    def on(cls, info: Mapping[str, object], low: str, high: str, **options) -> "LrasppSpec":
        """The head on a backbone's taps `low` and `high`, channels read from its `feature_info`."""
        return cls(channels_of(info, low), channels_of(info, high), low, high, **options)

    @property
    def taps(self) -> dict[str, str]:
        return {"low": self.low_tap, "high": self.high_tap}

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        return LrasppHead(self, num_classes, settings, name=name)

    def torch_tensors(self, num_classes: int, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        key = lambda *parts: tk.join(self.torch_prefix, *parts)  # noqa: E731
        yield from tk.conv_norm((*flax_path, "cbr"), key("cbr.0"), key("cbr.1"), self.high_features,
                                self.inter_features, 1)
        yield from tk.conv((*flax_path, "scale"), key("scale.1"), self.high_features, self.inter_features, 1)
        yield from tk.conv((*flax_path, "low_classifier"), key("low_classifier"), self.low_features, num_classes, 1,
                           bias=True)
        yield from tk.conv((*flax_path, "high_classifier"), key("high_classifier"), self.inter_features, num_classes,
                           1, bias=True)


class LrasppHead(nn.Module):
    spec: LrasppSpec
    num_classes: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> jax.Array:
        spec, dtype = self.spec, self.settings.dtype
        settings = dataclasses.replace(self.settings, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        low, high = features["low"], features["high"]
        x = ConvNormAct(spec.inter_features, act="relu", settings=settings, name="cbr")(high, train)
        pooled = jnp.mean(high, axis=(1, 2), keepdims=True)
        scale = PointwiseConv(spec.inter_features, dtype=dtype, name="scale")(pooled)
        x = resize_bilinear(x * nn.sigmoid(scale), low.shape[1:3])
        return (PointwiseConv(self.num_classes, True, dtype, name="low_classifier")(low)
                + PointwiseConv(self.num_classes, True, dtype, name="high_classifier")(x))
