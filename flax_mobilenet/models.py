"""The one MobileNet builder: turns a resolved `ModelSpec` into layers."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from .architectures import ModelSpec, feature_info
from .layers import ConvBNAct, InvertedResidual, activation, dense_init

MIN_INPUT_SIZE = 32


def check_images(x: Any) -> None:
    """Fail early, naming the problem, instead of deep inside XLA."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"expected a batch of NHWC images (N, H, W, 3), got shape {shape}")
    if shape[-1] != 3:
        hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))" if shape[1] == 3 else ""
        raise ValueError(f"expected 3 channels last (N, H, W, 3), got shape {tuple(shape)}{hint}")
    if min(shape[1], shape[2]) < MIN_INPUT_SIZE:
        raise ValueError(f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got {shape[1]}x{shape[2]}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"expected float images normalized with the ImageNet mean/std, got dtype {x.dtype}")


class MobileNet(nn.Module):
    """MobileNet V1/V2/V3 classifier or backbone.

    Layers are named `features_N` after torchvision's `features[N]`.  With `feature_taps`
    (names from `feature_info`, e.g. 'stride8', 'features.4') the call returns a dict of
    those feature maps and builds no head.  `num_classes` 0/None returns pooled features.
    """

    spec: ModelSpec
    num_classes: Optional[int] = 1000
    dropout: float = 0.2
    feature_taps: Optional[Sequence[str]] = None
    depthwise_impl: str = "auto"
    fold_bn: bool = False  # inference form: BatchNorm folded into conv biases (see inference.fold_batchnorm)
    dtype: Any = jnp.float32

    def _tap_layers(self) -> dict[int, list[str]]:
        available = feature_info(self.spec)
        by_layer: dict[int, list[str]] = {}
        for name in self.feature_taps:
            if name not in available:
                strides = sorted({info.stride for info in available.values()})
                raise ValueError(f"unknown feature tap {name!r}: available are 'features.0'.."
                                 f"'features.{max(i.layer for i in available.values())}' and "
                                 f"{', '.join(f'stride{s}' for s in strides)}")
            by_layer.setdefault(available[name].layer, []).append(name)
        return by_layer

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> Union[jax.Array, dict[str, jax.Array]]:
        check_images(x)
        spec = self.spec
        common = dict(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum, fold_bn=self.fold_bn, dtype=self.dtype)
        layers = [ConvBNAct(spec.stem_features, 3, 2, act=spec.stem_activation, name="features_0", **common)]
        layers += [InvertedResidual(block, depthwise_impl=self.depthwise_impl, name=f"features_{i + 1}", **common)
                   for i, block in enumerate(spec.blocks)]
        if spec.head_features:
            layers.append(ConvBNAct(spec.head_features, act=spec.head_activation,
                                    name=f"features_{len(layers)}", **common))

        taps = self._tap_layers() if self.feature_taps is not None else {}
        outputs = {}
        x = x.astype(self.dtype)
        last_layer = max(taps) if taps else len(layers) - 1
        for index, layer in enumerate(layers[: last_layer + 1]):
            x = layer(x, train)
            for name in taps.get(index, ()):
                outputs[name] = x
        if self.feature_taps is not None:
            return outputs

        x = jnp.mean(x, axis=(1, 2))
        if spec.hidden_features:
            x = nn.Dense(spec.hidden_features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init,
                         name="pre_logits")(x)
            x = activation(spec.hidden_activation)(x)
        if not self.num_classes:
            return x.astype(jnp.float32)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init,
                     name="classifier")(x)
        return x.astype(jnp.float32)
