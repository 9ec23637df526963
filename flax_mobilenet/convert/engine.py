"""PyTorch (torchvision / timm) state dicts -> Flax variables, strict and spec-driven.

`tensor_mappings` walks the resolved `ModelSpec` once and asks each layer's block kind for its
tensors: which PyTorch key holds each, the shape it must have and where it goes in the Flax tree.
Nothing here knows a family or a block kind, and nothing imports torch.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import numpy as np

from ..backbones.spec import ModelSpec
from ..heads import DenseHeads
from ..layers import torch_keys as tk
from ..layers.torch_keys import TensorMapping
from ..registry import list_models, model_entry, model_spec
from .torch_io import ConversionError, to_numpy, unwrap_state_dict


def tensor_mappings(spec: ModelSpec, num_classes: Optional[int]) -> list[TensorMapping]:
    """Every tensor of the model, in the order of its layers, then its head (no head for num_classes 0/None)."""
    out: list[TensorMapping] = []
    for index, layer in enumerate(spec.layers):
        out += layer.block.torch_tensors(layer.torch_prefix, (f"features_{index}",))
    for index, node in enumerate(spec.neck):
        if node.block is not None:
            out += node.block.torch_tensors(node.torch_prefix, (f"neck_{index}",))
    if isinstance(spec.head, DenseHeads):  # each dense head gives its own tensors, as block kinds do
        return out + (list(spec.head.torch_tensors(num_classes)) if num_classes else [])
    head, width = spec.head, spec.layers[-1].block.out_features
    if head.hidden_features and head.hidden_norm:
        out += tk.conv_norm(("pre_logits",), head.hidden_key, head.hidden_norm_key, width, head.hidden_features, 1)
    elif head.hidden_features:
        out += tk.dense(("pre_logits",), head.hidden_key, width, head.hidden_features,
                        as_conv1x1=head.hidden_key_is_conv)
    if num_classes:
        out += tk.dense(("classifier",), head.classifier_key, spec.num_features, num_classes)
    return out


@functools.cache
def _stem_keys() -> dict[str, str]:
    """The first tensor key of every registered model -> its source: what tells one layout from another."""
    return {tensor_mappings(model_spec(name), 0)[0].torch_key: model_entry(name).source for name in list_models()}


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """'torchvision', 'timm' or 'ultralytics' (which the yolov5 package shares), from the stem key of any
    registered model found in the checkpoint."""
    for key, source in _stem_keys().items():
        if key in state_dict:
            return source
    sample = ", ".join(list(state_dict)[:5]) or "no keys at all"
    raise ConversionError(f"not a torchvision, timm or ultralytics checkpoint of any model here: its keys begin "
                          f"{sample}")


def _classes_in(state_dict: Mapping[str, Any], spec: ModelSpec) -> int:
    """The class count of the checkpoint's first class-sized weight (a classifier's or a dense head's): the first
    weight whose leading dimension grows with num_classes, as a * num_classes + b (SSD: a = anchors per location,
    b = 0; YOLOv5: a = 3 anchors, b = 15 for box and objectness)."""
    one = {m.torch_key: m.torch_shape for m in tensor_mappings(spec, 1)}
    for mapping in tensor_mappings(spec, 2):
        if mapping.torch_key not in one or len(mapping.torch_shape) < 2:
            continue
        per_class = mapping.torch_shape[0] - one[mapping.torch_key][0]
        if per_class > 0:
            offset = one[mapping.torch_key][0] - per_class
            weight = state_dict.get(mapping.torch_key)
            if weight is None or len(weight.shape) != len(mapping.torch_shape) or (weight.shape[0] - offset) % per_class:
                return 0
            return (int(weight.shape[0]) - offset) // per_class
    return 0


def guess_model(state_dict: Mapping[str, Any]) -> Optional[tuple[str, dict[str, Any], int]]:
    """(name, overrides, num_classes) of the registered model whose keys and shapes the checkpoint fits."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    given = {k for k in shapes if not k.endswith("num_batches_tracked")}
    layout = detect_layout(state_dict)
    for name in list_models():
        if model_entry(name).source != layout:
            continue
        for overrides in model_entry(name).variants:
            spec = model_spec(name, **overrides)
            num_classes = _classes_in(state_dict, spec)
            expected = {m.torch_key: m.torch_shape for m in tensor_mappings(spec, num_classes)}
            if set(expected) == given and all(shapes[k] == s for k, s in expected.items()):
                return name, overrides, num_classes
    return None


def _describe(guess: tuple[str, dict[str, Any], int], requested: Optional[dict[str, Any]] = None) -> str:
    """The guessed model, with the options that differ from `requested` (default: its defaults)."""
    name, overrides, _ = guess
    requested = model_entry(name).defaults if requested is None else requested
    differing = [f"{k}={v}" for k, v in overrides.items() if requested.get(k) != v]
    return name + (f" ({', '.join(differing)})" if differing else "")


def convert_state_dict(name: str, state_dict: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """Variables {'params', 'batch_stats'} for `create_model(name, **overrides)` from a PyTorch state dict.

    Strict: any missing, unexpected or mis-shaped key raises `ConversionError` naming it.  The key
    layout (torchvision or timm) is read from the keys and must be the one `name` is defined by:
    torchvision names take torchvision checkpoints, timm names (and mobilenet_v1) timm ones.
    """
    state_dict = unwrap_state_dict(state_dict)
    layout = detect_layout(state_dict)
    num_classes = overrides.pop("num_classes", model_entry(name).defaults.get("num_classes", 1000))
    spec = model_spec(name, **overrides)
    if layout != model_entry(name).source:
        guess = guess_model(state_dict)
        message = f"{name} takes {model_entry(name).source} checkpoints, this one has the {layout} key layout"
        raise ConversionError(message + (f": this looks like a {_describe(guess)} checkpoint" if guess else ""))
    mappings = tensor_mappings(spec, num_classes)

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    missing, mis_shaped = [], []
    for m in mappings:
        if m.torch_key not in state_dict:
            missing.append(m.torch_key)
            continue
        array = to_numpy(state_dict[m.torch_key], m.torch_key)
        if tuple(array.shape) != m.torch_shape:
            mis_shaped.append(f"{m.torch_key}: checkpoint has {tuple(array.shape)}, {name} expects {m.torch_shape}")
            continue
        if m.fixed is not None:
            if not np.array_equal(array, m.fixed):
                raise ConversionError(
                    f"{m.torch_key} is a fixed tensor of {name} ({np.array2string(m.fixed.ravel(), precision=4)}), "
                    f"the checkpoint holds {np.array2string(array.ravel(), precision=4)}"
                    + (f": {m.fixed_hint(array)}" if m.fixed_hint else ""))
            continue
        node = variables[m.collection]
        for part in m.flax_path[:-1]:
            node = node.setdefault(part, {})
        node[m.flax_path[-1]] = m.to_flax(array)
    known = {m.torch_key for m in mappings}
    unexpected = [k for k in state_dict if k not in known and not k.endswith(".num_batches_tracked")]
    if missing or mis_shaped or unexpected:
        requested = {**model_entry(name).defaults, **overrides}
        raise ConversionError(_mismatch_message(name, spec, requested, state_dict, layout, num_classes, missing,
                                                unexpected, mis_shaped))
    return variables


def _mismatch_message(name, spec, requested, state_dict, layout, num_classes, missing, unexpected, mis_shaped) -> str:
    def listed(title, items):
        shown = "\n  ".join(items[:10]) + (f"\n  ... and {len(items) - 10} more" if len(items) > 10 else "")
        return f"{len(items)} {title}:\n  {shown}" if items else ""

    header = f"checkpoint ({layout} layout) does not fit {name}"
    guess = guess_model(state_dict)
    if guess and (guess[0] != name or model_spec(guess[0], **guess[1]) != spec):
        described = _describe(guess, requested if guess[0] == name else None)
        return f"{header}: this looks like a {described} checkpoint; convert it as that model"
    if guess:
        header += (f": its classifier has {guess[2]} classes, not num_classes={num_classes}; pass "
                   f"num_classes={guess[2]} (--num-classes {guess[2]})" if guess[2] else
                   ": it has no classifier; pass num_classes=0")
    lines = [header, listed("missing keys", missing), listed("unexpected keys", unexpected),
             listed("mis-shaped keys", mis_shaped)]
    return "\n".join(line for line in lines if line)


