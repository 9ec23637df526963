"""DeepLabV3 (torchvision `DeepLabHead`): ASPP on one tap, then a 3x3 conv-BN-ReLU and a 1x1 classifier.

ASPP: a 1x1 conv-BN-ReLU, one dilated 3x3 conv-BN-ReLU per rate, and a pooling branch (global average
-> 1x1 conv-BN-ReLU on the 1x1 map -> spread back over the map), concatenated -> 1x1 conv-BN-ReLU
-> dropout.  PyTorch keys: classifier.0.convs.{0..N+1}, classifier.0.project, classifier.{1,2,4}.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings, PointwiseConv
from . import OneTapHead


@dataclasses.dataclass(frozen=True)
class DeepLabV3Spec(OneTapHead):
    task: ClassVar[str] = "segmentation"
    in_features: int
    tap: str = "features.16"
    rates: tuple[int, ...] = (12, 24, 36)
    aspp_features: int = 256
    dropout: float = 0.5  # after the ASPP projection
    torch_prefix: str = "classifier"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        return DeepLabV3Head(self, num_classes, settings, name=name)

    def torch_tensors(self, num_classes: int, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        key = lambda *parts: tk.join(self.torch_prefix, *parts)  # noqa: E731
        width, branches = self.aspp_features, len(self.rates) + 2
        yield from tk.conv_norm((*flax_path, "convs_0"), key("0.convs.0.0"), key("0.convs.0.1"), self.in_features,
                                width, 1)
        for index in range(1, len(self.rates) + 1):
            yield from tk.conv_norm((*flax_path, f"convs_{index}"), key(f"0.convs.{index}.0"),
                                    key(f"0.convs.{index}.1"), self.in_features, width, 3)
        pool = branches - 1  # ASPPPooling: (0) pool, (1) conv, (2) BN
        yield from tk.conv_norm((*flax_path, f"convs_{pool}"), key(f"0.convs.{pool}.1"), key(f"0.convs.{pool}.2"),
                                self.in_features, width, 1)
        yield from tk.conv_norm((*flax_path, "project"), key("0.project.0"), key("0.project.1"), branches * width,
                                width, 1)
        yield from tk.conv_norm((*flax_path, "conv"), key("1"), key("2"), width, width, 3)
        yield from tk.conv((*flax_path, "logits"), key("4"), width, num_classes, 1, bias=True)


class DeepLabV3Head(nn.Module):
    spec: DeepLabV3Spec
    num_classes: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> jax.Array:
        spec = self.spec
        settings = dataclasses.replace(self.settings, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        x, width = features["x"], spec.aspp_features
        branches = [ConvNormAct(width, act="relu", settings=settings, name="convs_0")(x, train)]
        for index, rate in enumerate(spec.rates, 1):
            branches.append(ConvNormAct(width, 3, dilation=rate, act="relu", settings=settings,
                                        name=f"convs_{index}")(x, train))
        # The pooling branch's BatchNorm sees a 1x1 map (in training: statistics over the batch alone), and
        # bilinear upsampling of a 1x1 map is a broadcast.
        pooled = ConvNormAct(width, act="relu", settings=settings, name=f"convs_{len(spec.rates) + 1}")(
            jnp.mean(x, axis=(1, 2), keepdims=True), train)
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], width)))
        x = ConvNormAct(width, act="relu", settings=settings, name="project")(jnp.concatenate(branches, -1), train)
        x = nn.Dropout(spec.dropout, deterministic=not train)(x)
        x = ConvNormAct(width, 3, act="relu", settings=settings, name="conv")(x, train)
        return PointwiseConv(self.num_classes, True, settings.dtype, name="logits")(x)
