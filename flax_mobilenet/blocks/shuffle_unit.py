"""ShuffleNetV2's unit (torchvision `shufflenetv2.InvertedResidual`).

Stride 2: both branches see the whole input; branch1 = depthwise 3x3 (stride 2) -> BN -> 1x1 -> BN -> ReLU,
branch2 = 1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> 1x1 -> BN -> ReLU.  Stride 1: the channels are split in
halves, the first passes unchanged and branch2 runs on the second.  Either way the two halves are concatenated
and shuffled with 2 groups.  Each conv-BN pair is a `ConvNormAct`, so BatchNorm folding finds all of them.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings
from ..layers.ops import channel_shuffle

DEPTHWISE_KERNEL = 3


class BranchConv(NamedTuple):
    """One conv-BN(-ReLU) of a branch: every 1x1 is followed by a ReLU, no depthwise conv is."""

    name: str  # the ConvNormAct's Flax name
    branch: str  # 'branch1' | 'branch2', torchvision's Sequential
    conv_index: int  # the conv's index in that Sequential; its BatchNorm follows at conv_index + 1
    in_features: int
    out_features: int
    depthwise: bool


@dataclasses.dataclass(frozen=True)
class ShuffleUnitSpec:
    in_features: int
    out_features: int
    unit_stride: int  # 2: two-branch downsampling unit; 1: channel split, branch2 on the second half

    def __post_init__(self) -> None:
        if self.unit_stride == 1 and self.in_features != self.out_features // 2 * 2:
            raise ValueError(f"a stride-1 shuffle unit keeps its (even) width: {self.in_features} in, "
                             f"{self.out_features} out")

    @property
    def stride(self) -> int:
        return self.unit_stride

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def convs(self) -> tuple[BranchConv, ...]:
        """Every conv of the unit in torchvision's order (branch1 only in the stride-2 unit)."""
        width, half = self.in_features, self.out_features // 2
        branch1 = (BranchConv("branch1_depthwise", "branch1", 0, width, width, True),
                   BranchConv("branch1_pointwise", "branch1", 2, width, half, False))
        branch2_in = width if self.unit_stride > 1 else half
        branch2 = (BranchConv("branch2_pointwise_in", "branch2", 0, branch2_in, half, False),
                   BranchConv("branch2_depthwise", "branch2", 3, half, half, True),
                   BranchConv("branch2_pointwise_out", "branch2", 5, half, half, False))
        return (branch1 if self.unit_stride > 1 else ()) + branch2

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return ShuffleUnit(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        for conv in self.convs():
            yield from tk.conv_norm((*flax_path, conv.name), tk.join(prefix, conv.branch, str(conv.conv_index)),
                                    tk.join(prefix, conv.branch, str(conv.conv_index + 1)), conv.in_features,
                                    conv.out_features, DEPTHWISE_KERNEL if conv.depthwise else 1, conv.depthwise)


class ShuffleUnit(nn.Module):
    spec: ShuffleUnitSpec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec = self.spec
        branches = {}
        if spec.unit_stride == 1:
            branches["branch1"], x = jnp.split(x, 2, axis=-1)  # the first half passes through
        for conv in spec.convs():
            y = branches.get(conv.branch, x)
            branches[conv.branch] = ConvNormAct(
                conv.out_features, DEPTHWISE_KERNEL if conv.depthwise else 1, spec.unit_stride if conv.depthwise else 1,
                depthwise=conv.depthwise, act=None if conv.depthwise else "relu", settings=self.settings,
                name=conv.name)(y, train)
        return channel_shuffle(jnp.concatenate([branches["branch1"], branches["branch2"]], axis=-1), 2)
