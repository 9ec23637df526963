"""FCN head (torchvision `FCNHead`): 3x3 conv-BN-ReLU to in/4 channels, dropout, 1x1 classifier.

torchvision's segmentation models use it as the auxiliary classifier (`aux_classifier`, `aux_loss=True`).
PyTorch keys: PREFIX.0 (conv), PREFIX.1 (BN), PREFIX.4 (classifier, with bias).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Iterator

import flax.linen as nn
import jax

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings, PointwiseConv
from . import OneTapHead


@dataclasses.dataclass(frozen=True)
class FcnSpec(OneTapHead):
    task: ClassVar[str] = "segmentation"
    in_features: int
    tap: str = "features.4"
    dropout: float = 0.1
    torch_prefix: str = "aux_classifier"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    @property
    def inter_features(self) -> int:
        return self.in_features // 4

    def module(self, settings: LayerSettings, num_classes: int, name: str) -> nn.Module:
        return FcnHead(self, num_classes, settings, name=name)

    def torch_tensors(self, num_classes: int, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        key = lambda part: tk.join(self.torch_prefix, part)  # noqa: E731
        yield from tk.conv_norm((*flax_path, "conv"), key("0"), key("1"), self.in_features, self.inter_features, 3)
        yield from tk.conv((*flax_path, "logits"), key("4"), self.inter_features, num_classes, 1, bias=True)


class FcnHead(nn.Module):
    spec: FcnSpec
    num_classes: int
    settings: LayerSettings

    @nn.compact
    def __call__(self, features: dict[str, jax.Array], train: bool = False) -> jax.Array:
        spec = self.spec
        settings = dataclasses.replace(self.settings, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        x = ConvNormAct(spec.inter_features, 3, act="relu", settings=settings, name="conv")(features["x"], train)
        x = nn.Dropout(spec.dropout, deterministic=not train)(x)
        return PointwiseConv(self.num_classes, True, settings.dtype, name="logits")(x)
