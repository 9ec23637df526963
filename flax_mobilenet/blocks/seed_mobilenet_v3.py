"""Seed 000's MobileNetV3 block (`MobileNetV3_InvertedResidual`; its YAMLs call it `MobileNetV3`), YAML row
[out, hidden, k, s, use_se, use_hs].  Not torchvision's block: in the expanding form SE comes *before* the
activation, and SE's squeeze width is c // 4 with no rounding to 8.

- hidden == in: dw kxk -> BN -> act -> SE -> pw 1x1 -> BN
- else:         pw 1x1 -> BN -> act -> dw kxk -> BN -> SE -> act -> pw 1x1 -> BN
- identity add iff stride 1 and in == out; act = hard-swish if use_hs else ReLU; every conv without bias.
- SE: avgpool -> Linear(c, c // 4) (bias) -> ReLU -> Linear(c // 4, c) (bias) -> hard-sigmoid, times x.

PyTorch keys: the block's `conv` Sequential by index (an empty Sequential stands where SE is off and still
takes its index): hidden == in: `conv.0` dw, `conv.1` BN, `conv.3` SE, `conv.4` pw, `conv.5` BN; else `conv.0`
pw, `conv.1` BN, `conv.3` dw, `conv.4` BN, `conv.5` SE, `conv.7` pw, `conv.8` BN; SE `conv.K.fc.0`, `conv.K.fc.2`.
Flax: `expand`, `depthwise`, `se/{reduce,expand}`, `project`.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import flax.linen as nn
import jax

from ..layers import torch_keys as tk
from ..layers.conv import ConvNormAct, LayerSettings
from ..layers.ops import activation
from ..layers.squeeze_excite import SqueezeExcite


@dataclasses.dataclass(frozen=True)
class SeedMobileNetV3Spec:
    in_features: int
    out_features: int
    hidden_features: int
    kernel_size: int
    conv_stride: int
    use_se: bool
    use_hs: bool

    @property
    def stride(self) -> int:
        return self.conv_stride

    @property
    def has_expansion(self) -> bool:
        return self.in_features != self.hidden_features

    @property
    def residual(self) -> bool:
        return self.conv_stride == 1 and self.in_features == self.out_features

    @property
    def activation(self) -> str:
        return "hard_swish" if self.use_hs else "relu"

    @property
    def se_features(self) -> int:
        return self.hidden_features // 4 if self.use_se else 0

    @property
    def inner_taps(self) -> dict[str, int]:
        return {}

    def module(self, settings: LayerSettings, name: str) -> nn.Module:
        return SeedMobileNetV3(self, settings, name=name)

    def torch_tensors(self, prefix: str, flax_path: tk.FlaxPath) -> Iterator[tk.TensorMapping]:
        c_in, hidden, c_out = self.in_features, self.hidden_features, self.out_features
        if self.has_expansion:
            index = dict(expand=(0, 1), depthwise=(3, 4), se=5, project=(7, 8))
        else:
            index = dict(depthwise=(0, 1), se=3, project=(4, 5))
        key = lambda j: tk.join(prefix, f"conv.{j}")  # noqa: E731
        if self.has_expansion:
            yield from tk.conv_norm((*flax_path, "expand"), *map(key, index["expand"]), c_in, hidden, 1)
        yield from tk.conv_norm((*flax_path, "depthwise"), *map(key, index["depthwise"]), hidden, hidden,
                                self.kernel_size, depthwise=True)
        if self.use_se:
            se = key(index["se"])
            yield from tk.dense((*flax_path, "se", "reduce"), tk.join(se, "fc.0"), hidden, self.se_features)
            yield from tk.dense((*flax_path, "se", "expand"), tk.join(se, "fc.2"), self.se_features, hidden)
        yield from tk.conv_norm((*flax_path, "project"), *map(key, index["project"]), hidden, c_out, 1)


class SeedMobileNetV3(nn.Module):
    spec: SeedMobileNetV3Spec
    settings: LayerSettings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec, settings, hidden, act = self.spec, self.settings, self.spec.hidden_features, self.spec.activation
        shortcut = x

        def squeeze_excite(y):
            if not spec.use_se:
                return y
            return SqueezeExcite(spec.se_features, act="relu", gate="hard_sigmoid", dtype=settings.dtype, name="se")(y)

        if spec.has_expansion:
            x = ConvNormAct(hidden, act=act, settings=settings, name="expand")(x, train)
            x = ConvNormAct(hidden, spec.kernel_size, spec.conv_stride, depthwise=True, settings=settings,
                            name="depthwise")(x, train)
            x = activation(act)(squeeze_excite(x))
        else:
            x = ConvNormAct(hidden, spec.kernel_size, spec.conv_stride, depthwise=True, act=act, settings=settings,
                            name="depthwise")(x, train)
            x = squeeze_excite(x)
        x = ConvNormAct(spec.out_features, settings=settings, name="project")(x, train)
        return x + shortcut if spec.residual else x
