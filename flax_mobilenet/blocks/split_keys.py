"""A block whose PyTorch tensors are split over several module paths: any block kind, computed as it is, with
parts of its state-dict keys moved.

torchvision's SSDLite cuts MobileNetV3's C4 block in two (`SSDLiteFeatureExtractorMobileNet`): its expansion
ends the first feature Sequential (`backbone.features.0.13.{0,1}`), the rest of the block begins the second
(`backbone.features.1.0.{1,2,3}`).  The Flax module (and so its parameter tree, its feature points and BatchNorm
folding) is the wrapped block's; only `torch_tensors` differs.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn

from ..layers import torch_keys as tk
from ..layers.conv import LayerSettings
from . import Block


@dataclasses.dataclass(frozen=True)
class SplitKeysSpec:
    block: Block
    # (path under the layer's prefix, the module path it moves to); the first whose path prefixes a key wins.
    moves: tuple[tuple[str, str], ...]

    @property
    def in_features(self) -> int:
        return self.block.in_features

    @property
    def out_features(self) -> int:
        return self.block.out_features

    @property
    def stride(self) -> int:
        return self.block.stride

    @property
    def inner_taps(self) -> dict[str, int]:
        return self.block.inner_taps

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return self.block.module(settings, name)

    def torch_key(self, prefix: str, key: str) -> str:
        for path, target in self.moves:
            old = tk.join(prefix, path)
            if key.startswith(old + "."):
                return target + key[len(old):]
        return key

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        for mapping in self.block.torch_tensors(prefix, flax_path):
            yield dataclasses.replace(mapping, torch_key=self.torch_key(prefix, mapping.torch_key))
