"""The one generic builder: turns a resolved `ModelSpec` (layers, then a classifier head) into a Flax model."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..heads import DenseHeads, resize_bilinear
from ..layers.conv import ConvNormAct, LayerSettings, dense_init
from ..layers.ops import activation
from .spec import ModelSpec, feature_info

MIN_INPUT_SIZE = 32


def check_images(x: Any, min_size: int = MIN_INPUT_SIZE) -> None:
    """Fail early, naming the problem, instead of deep inside XLA."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"expected a batch of NHWC images (N, H, W, 3), got shape {shape}")
    if shape[-1] != 3:
        hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))" if shape[1] == 3 else ""
        raise ValueError(f"expected 3 channels last (N, H, W, 3), got shape {tuple(shape)}{hint}")
    if min(shape[1], shape[2]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size}, got {shape[1]}x{shape[2]}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"expected float images (normalized as the model's weights expect), got dtype {x.dtype}")


class MobileNet(nn.Module):
    """Classifier or backbone of any registered family.

    Layers are named `features_N` after the N-th entry of `spec.layers` (torchvision's `features[N]` for
    V1-V3).  With `feature_taps` (names from `feature_info`, e.g. 'stride8', 'features.4',
    'features.13.expand') the call returns a dict of those maps and builds no head.  `num_classes`
    0/None returns the pooled features.  A spec whose head is `DenseHeads` (segmentation) runs each head
    on its taps and returns logits (N, H, W, num_classes) at the input size, or {output: logits} with
    several heads (torchvision's 'out', 'aux'); with `num_classes` 0/None, the maps its heads take.  A detection
    head (SSDLite) returns {'bbox_regression', 'cls_logits'} per anchor; `anchors` and `detect` serve it.
    """

    spec: ModelSpec
    num_classes: Optional[int] = 1000
    dropout: float = 0.2
    feature_taps: Optional[Sequence[str]] = None
    depthwise_impl: str = "auto"
    fold_bn: bool = False  # inference form: BatchNorm folded into conv biases (see inference.fold_batchnorm)
    dtype: Any = jnp.float32

    @property
    def settings(self) -> LayerSettings:
        return LayerSettings(self.spec.bn_eps, self.spec.bn_momentum, self.fold_bn, self.dtype, self.depthwise_impl)

    def _taps_by_layer(self, names: Sequence[str]) -> dict[int, list[tuple[str, Optional[str]]]]:
        available = feature_info(self.spec)
        by_layer: dict[int, list[tuple[str, Optional[str]]]] = {}
        for name in names:
            if name not in available:
                strides = sorted({info.stride for info in available.values() if info.name.startswith("stride")})
                inner = sorted({info.inner for info in available.values() if info.inner})
                raise ValueError(f"unknown feature tap {name!r}: available are 'features.0'.."
                                 f"'features.{len(self.spec.layers) - 1}', "
                                 + (f"'features.N.{inner[0]}' where a block has one, " if inner else "")
                                 + ", ".join(f"stride{s}" for s in strides))
            by_layer.setdefault(available[name].layer, []).append((name, available[name].inner))
        return by_layer

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> Union[jax.Array, dict[str, jax.Array]]:
        check_images(x)
        settings = self.settings
        layers = [layer.block.module(settings, f"features_{i}") for i, layer in enumerate(self.spec.layers)]
        dense = isinstance(self.spec.head, DenseHeads) and self.feature_taps is None
        wanted = self.spec.head.taps if dense else self.feature_taps
        taps = self._taps_by_layer(wanted) if wanted is not None else {}
        outputs, size = {}, x.shape[1:3]
        x = x.astype(self.dtype)
        for index, layer in enumerate(layers[: (max(taps) if taps else len(layers) - 1) + 1]):
            points = tuple(point for _, point in taps.get(index, ()) if point)
            if points:
                x, inner = layer(x, train, taps=points)
            else:
                x = layer(x, train)
            for name, point in taps.get(index, ()):
                outputs[name] = inner[point] if point else x
        if dense:
            return self.segment(outputs, size, train)
        if self.feature_taps is not None:
            return outputs
        return self.classify(jnp.mean(x, axis=(1, 2)), train)

    def segment(self, features: dict[str, jax.Array], size: tuple[int, int],
                train: bool) -> Union[jax.Array, dict[str, jax.Array]]:
        """Each dense head on its taps, its logits upsampled (bilinear, align_corners=False) to `size`."""
        heads: DenseHeads = self.spec.head
        if not self.num_classes:
            return features
        logits = {}
        for output, head in heads.heads:
            module = head.module(self.settings, self.num_classes, heads.module_name(head))
            x = module({role: features[tap] for role, tap in head.taps.items()}, train)
            if getattr(head, "upsample", True):
                x = resize_bilinear(x, size)
            logits[output] = jax.tree.map(lambda y: y.astype(jnp.float32), x)  # a head may return a dict (SSD)
        return logits if len(logits) > 1 else logits[heads.heads[0][0]]

    def _detection_head(self) -> Any:
        heads = [head for _, head in getattr(self.spec.head, "heads", ()) if hasattr(head, "anchors")]
        if not heads:
            raise ValueError("not a detection model: its head has no anchors (see list_models(), 'ssdlite*')")
        return heads[0]

    def anchors(self, image_size: Sequence[int]) -> Any:
        """A detection model's default boxes for inputs of (height, width): (anchors, 4) float32 xyxy input
        pixels, in the order of its outputs (NumPy, from the spec alone: no variables, nothing traced)."""
        return self._detection_head().anchors(image_size)

    def postprocessor(self, image_size: Sequence[int], **options: Any) -> Any:
        """A detection model's post-processing for inputs of (height, width): its raw outputs (what `apply`
        returns) -> `detection.Detections` (torchvision's `SSD.postprocess_detections`; `options` override
        its thresholds).  Jit-able."""
        postprocess = self._detection_head().postprocessor(image_size, **options)  # checks the options
        if not self.num_classes:
            raise ValueError("detect needs the head: this model was built with num_classes=0 (the feature maps)")
        return postprocess

    def detect(self, variables: Any, images: jax.Array, **options: Any) -> Any:
        """A detection model's `detection.Detections` (boxes in input pixels, scores, labels, num_valid) for a
        batch of normalized NHWC images: `apply`, then `postprocessor`.  Jit-able (jax.jit(model.detect))."""
        return self.postprocessor(images.shape[1:3], **options)(self.apply(variables, images, train=False))

    def classify(self, x: jax.Array, train: bool) -> jax.Array:
        head = self.spec.head
        if head.hidden_features and head.hidden_norm:
            x = ConvNormAct(head.hidden_features, act=head.hidden_activation, settings=self.settings,
                            name="pre_logits")(x[:, None, None, :], train)[:, 0, 0, :]
        elif head.hidden_features:
            x = nn.Dense(head.hidden_features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init,
                         name="pre_logits")(x)
            x = activation(head.hidden_activation)(x)
        if not self.num_classes:
            return x.astype(jnp.float32)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_init,
                     name="classifier")(x)
        return x.astype(jnp.float32)
