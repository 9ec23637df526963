"""The one generic builder: turns a resolved `ModelSpec` (layers, an optional neck, then a classifier or dense heads)
into a Flax model."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..heads import DenseHeads, resize_bilinear
from ..layers.conv import ConvNormAct, LayerSettings, dense_init
from ..layers.ops import activation
from .spec import FeatureInfo, ModelSpec, feature_info

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


class VisionModel(nn.Module):
    """Any registered model, built from its resolved `ModelSpec`: a classifier, a backbone's feature maps, or a
    segmentation / detection model (layers, an optional neck, dense heads).

    Layers are named `features_N` after the N-th entry of `spec.layers` (torchvision's `features[N]` for
    V1-V3), neck maps `neck_I`.  With `feature_taps` (names from `feature_info`, e.g. 'stride8', 'features.4',
    'features.13.expand', 'neck.5') the call returns a dict of those maps and builds no head.  `num_classes`
    0/None returns the pooled features (a classifier) or the maps the heads read (a dense model).  A spec whose
    head is `DenseHeads` runs each head on its taps (`run_heads`): segmentation logits (N, H, W, num_classes) at
    the input size, or {output: logits} with several heads (torchvision's 'out', 'aux'); a detection head's
    outputs as the head defines them (`head.raw_outputs`), which `detect` post-processes.
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

    @property
    def input_multiple(self) -> int:
        """What image sides must be multiples of: a neck's deepest stride (its concats join maps of several
        strides, as ultralytics' YOLO needs multiples of 32); 1 without a neck (any size from 32 up)."""
        return max(info.stride for info in feature_info(self.spec).values()) if self.spec.neck else 1

    def _check_taps(self, names: Sequence[str]) -> dict[str, FeatureInfo]:
        available = feature_info(self.spec)
        for name in names:
            if name not in available:
                strides = sorted({info.stride for info in available.values() if info.name.startswith("stride")})
                inner = sorted({info.inner for info in available.values() if info.inner})
                raise ValueError(f"unknown feature tap {name!r}: available are 'features.0'.."
                                 f"'features.{len(self.spec.layers) - 1}', "
                                 + (f"'features.N.{inner[0]}' where a block has one, " if inner else "")
                                 + ", ".join(f"stride{s}" for s in strides)
                                 + (f", 'neck.0'..'neck.{len(self.spec.neck) - 1}'" if self.spec.neck else ""))
        return available

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> Union[jax.Array, dict[str, jax.Array]]:
        check_images(x)
        settings, spec = self.settings, self.spec
        dense = isinstance(spec.head, DenseHeads) and self.feature_taps is None
        wanted = tuple(spec.head.taps if dense else self.feature_taps or ())
        available = self._check_taps(wanted)
        stride = self.input_multiple
        if x.shape[1] % stride or x.shape[2] % stride:
            raise ValueError(f"this model takes images whose height and width are multiples of {stride} (its "
                             f"neck joins maps down to stride {stride}), got {x.shape[1]}x{x.shape[2]}")
        # the neck maps asked for, and every map they are computed from (a neck only reads earlier names)
        nodes = sorted({available[name].node for name in wanted if available[name].node is not None})
        needed = set(wanted) | {tap for i in range(max(nodes) + 1 if nodes else 0) for tap in spec.neck[i].inputs}
        by_layer: dict[int, list[tuple[str, Optional[str]]]] = {}
        for name in needed:
            if available[name].node is None:
                by_layer.setdefault(available[name].layer, []).append((name, available[name].inner))
        maps, size = {}, x.shape[1:3]
        x = x.astype(self.dtype)
        last = max(by_layer) if by_layer else len(spec.layers) - 1  # no layer past the last tap runs
        for index, layer_spec in enumerate(spec.layers[: last + 1]):
            layer = layer_spec.block.module(settings, f"features_{index}")
            points = tuple(point for _, point in by_layer.get(index, ()) if point)
            if points:
                x, inner = layer(x, train, taps=points)
            else:
                x = layer(x, train)
            for name, point in by_layer.get(index, ()):
                maps[name] = inner[point] if point else x
        for index in range(max(nodes) + 1 if nodes else 0):
            maps[f"neck.{index}"] = self._neck_node(index, [maps[tap] for tap in spec.neck[index].inputs], train)
        if dense:
            return self.run_heads({name: maps[name] for name in wanted}, size, train)
        if self.feature_taps is not None:
            return {name: maps[name] for name in self.feature_taps}
        return self.classify(jnp.mean(x, axis=(1, 2)), train)

    def _neck_node(self, index: int, inputs: list[jax.Array], train: bool) -> jax.Array:
        node = self.spec.neck[index]
        if node.op == "concat":
            return jnp.concatenate(inputs, axis=-1)
        if node.op == "upsample":  # nn.Upsample(scale_factor=2, mode='nearest')
            return jnp.repeat(jnp.repeat(inputs[0], 2, axis=1), 2, axis=2)
        return node.block.module(self.settings, f"neck_{index}")(inputs[0], train)

    def run_heads(self, features: dict[str, jax.Array], size: tuple[int, int],
                  train: bool) -> Union[jax.Array, dict[str, jax.Array]]:
        """Each dense head on its taps; a segmentation head's logits upsampled (bilinear, align_corners=False) to
        `size`, a detection head's outputs (`upsample = False`) as they are."""
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

    segment = run_heads  # its name before detection heads ran through it too

    @property
    def detection_head(self) -> Any:
        """The detection head (a `heads.DetectionHead`): its outputs, post-processing and loss."""
        heads = [head for _, head in getattr(self.spec.head, "heads", ()) if head.task == "detection"]
        if not heads:
            raise ValueError("not a detection model (see list_models(): 'ssdlite*', 'yolo*')")
        return heads[0]

    def anchors(self, image_size: Sequence[int]) -> Any:
        """An anchor-box detector's default boxes for inputs of (height, width): (anchors, 4) float32 xyxy input
        pixels, in the order of its outputs (NumPy, from the spec alone: no variables, nothing traced)."""
        head = self.detection_head
        if not hasattr(head, "anchors"):
            raise ValueError(f"{type(head).__name__} has no anchor boxes: its outputs are decoded boxes")
        return head.anchors(image_size)

    def postprocessor(self, image_size: Sequence[int], **options: Any) -> Any:
        """A detection model's post-processing for inputs of (height, width): its raw outputs (what `apply`
        returns) -> `detection.Detections` (the reference's own post-processing; `options` override its
        thresholds).  Jit-able."""
        postprocess = self.detection_head.postprocessor(image_size, **options)  # checks the options
        if not self.num_classes:
            raise ValueError("detect needs the head: this model was built with num_classes=0 (the feature maps)")
        return postprocess

    def loss_fn(self, image_size: Sequence[int], **options: Any) -> Any:
        """A detection model's training loss for inputs of (height, width): `(outputs, batch) -> (loss, metrics)`,
        jit-able (the head's own: SSD's matching and hard-negative mining, ...)."""
        return self.detection_head.loss_fn(image_size, **options)

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


MobileNet = VisionModel  # the builder's first name, kept for code that holds it
