"""Block kinds.  Each kind lives in one file holding everything about it: its spec (a frozen
dataclass the family tables resolve to), its Flax module, its PyTorch key mapping and its feature
points.  The builder and the converter know a block only through the `Block` protocol below, so a
new kind needs no change to either.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import flax.linen as nn

from ..layers.conv import LayerSettings
from ..layers.torch_keys import FlaxPath, TensorMapping


class Block(Protocol):
    """What every block kind's spec provides."""

    in_features: int
    out_features: int

    @property
    def stride(self) -> int:
        """How much the block downsamples (1 where dilation replaces striding)."""

    @property
    def inner_taps(self) -> dict[str, int]:
        """Feature points inside the block (name -> channels), e.g. {'expand': 672}; {} if none.

        The block's module returns them as `(x, {name: map})` when called with `taps=(name, ...)`.
        """

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        """The Flax module, called as `module(x, train)`."""

    def torch_tensors(self, prefix: str, flax_path: FlaxPath) -> Iterator[TensorMapping]:
        """Every tensor of the block in the reference's state dict, under the module path `prefix`."""


class SameSizeBlock:
    """For a block kind that keeps the spatial size and has no inner feature points (YOLO's CSP blocks, SPPF,
    C2PSA): its `stride` and `inner_taps`."""

    @property
    def stride(self) -> int:
        return 1

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}
