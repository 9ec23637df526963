"""PyTorch (torchvision / timm) state dicts -> Flax variables, strict and table-driven.

`tensor_mappings` walks the resolved `ModelSpec` once and says, for every tensor, which
PyTorch key holds it, the PyTorch shape it must have and where it goes in the Flax tree.
Nothing here imports torch: tensors are taken through `.numpy()` duck typing.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from .architectures import ModelSpec
from .registry import list_models, model_entry, model_spec

LAYOUTS = ("torchvision", "timm")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class ConversionError(ValueError):
    """A checkpoint that does not fit the model asked for; the message names every problem."""


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    torch_key: str
    torch_shape: tuple[int, ...]
    collection: str  # 'params' | 'batch_stats'
    flax_path: tuple[str, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _conv_to_hwio(w: np.ndarray) -> np.ndarray:  # OIHW -> HWIO; depthwise (C,1,k,k) -> (k,k,1,C)
    return w.transpose(2, 3, 1, 0)


def _conv1x1_to_dense(w: np.ndarray) -> np.ndarray:  # (out, in, 1, 1) -> (in, out)
    return w[:, :, 0, 0].T


def _linear_to_dense(w: np.ndarray) -> np.ndarray:  # (out, in) -> (in, out)
    return w.T


def _same(w: np.ndarray) -> np.ndarray:
    return w


def _conv_bn(flax_path, conv_key, bn_key, in_ch, out_ch, kernel, depthwise) -> Iterator[TensorMapping]:
    shape = (out_ch, 1 if depthwise else in_ch, kernel, kernel)
    yield TensorMapping(conv_key + ".weight", shape, "params", (*flax_path, "conv", "kernel"), _conv_to_hwio)
    for torch_name, collection, flax_name in (("weight", "params", "scale"), ("bias", "params", "bias"),
                                              ("running_mean", "batch_stats", "mean"),
                                              ("running_var", "batch_stats", "var")):
        yield TensorMapping(f"{bn_key}.{torch_name}", (out_ch,), collection, (*flax_path, "bn", flax_name), _same)


def _dense(flax_path, key, in_ch, out_ch, as_conv1x1=False) -> Iterator[TensorMapping]:
    shape = (out_ch, in_ch, 1, 1) if as_conv1x1 else (out_ch, in_ch)
    yield TensorMapping(key + ".weight", shape, "params", (*flax_path, "kernel"),
                        _conv1x1_to_dense if as_conv1x1 else _linear_to_dense)
    yield TensorMapping(key + ".bias", (out_ch,), "params", (*flax_path, "bias"), _same)


def _block_keys(spec: ModelSpec, index: int, layout: str) -> dict[str, str]:
    """PyTorch module prefixes of block `index`'s parts: expand, depthwise, se, project(+_bn)."""
    block = spec.blocks[index]
    parts = (["expand"] if block.expanded_features != block.in_features else []) + ["depthwise"]
    if layout == "timm":
        stage_start = next(i for i, b in enumerate(spec.blocks) if b.stage == block.stage)
        prefix = f"blocks.{block.stage}.{index - stage_start}."
        if "expand" in parts:  # timm InvertedResidual
            keys = dict(expand="conv_pw", expand_bn="bn1", depthwise="conv_dw", depthwise_bn="bn2",
                        project="conv_pwl", project_bn="bn3")
        else:  # timm DepthwiseSeparableConv
            keys = dict(depthwise="conv_dw", depthwise_bn="bn1", project="conv_pw", project_bn="bn2")
        keys["se"] = "se"
        return {part: prefix + key for part, key in keys.items()}
    if spec.family == "v2":  # torchvision: ConvBNAct..., then a bare Conv2d and BatchNorm2d
        keys = {part: f"conv.{j}.0" for j, part in enumerate(parts)}
        keys.update({part + "_bn": f"conv.{j}.1" for j, part in enumerate(parts)})
        keys.update(project=f"conv.{len(parts)}", project_bn=f"conv.{len(parts) + 1}")
    elif spec.family == "v3":  # torchvision: every part is a ConvBNAct, SE in between
        parts += (["se"] if block.se_features else []) + ["project"]
        keys = {part: f"block.{j}.0" for j, part in enumerate(parts)}
        keys.update({part + "_bn": f"block.{j}.1" for j, part in enumerate(parts)})
        keys.update(se=f"block.{parts.index('se')}" if "se" in parts else "")
    else:
        raise ConversionError("torchvision has no MobileNetV1; MobileNetV1 weights come in timm's layout")
    return {part: f"features.{index + 1}.{key}" for part, key in keys.items()}


def tensor_mappings(spec: ModelSpec, num_classes: Optional[int], layout: str) -> list[TensorMapping]:
    """Every tensor of the model in PyTorch order (`layout`: 'torchvision' or 'timm')."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    timm = layout == "timm"
    out = list(_conv_bn(("features_0",), "conv_stem" if timm else "features.0.0", "bn1" if timm else "features.0.1",
                        3, spec.stem_features, 3, False))
    for i, block in enumerate(spec.blocks):
        keys, path = _block_keys(spec, i, layout), (f"features_{i + 1}",)
        if block.expanded_features != block.in_features:
            out += _conv_bn((*path, "expand"), keys["expand"], keys["expand_bn"], block.in_features,
                            block.expanded_features, 1, False)
        out += _conv_bn((*path, "depthwise"), keys["depthwise"], keys["depthwise_bn"], block.expanded_features,
                        block.expanded_features, block.kernel_size, True)
        if block.se_features:
            out += _dense((*path, "se", "reduce"), keys["se"] + (".conv_reduce" if timm else ".fc1"),
                          block.expanded_features, block.se_features, as_conv1x1=True)
            out += _dense((*path, "se", "expand"), keys["se"] + (".conv_expand" if timm else ".fc2"),
                          block.se_features, block.expanded_features, as_conv1x1=True)
        out += _conv_bn((*path, "project"), keys["project"], keys["project_bn"], block.expanded_features,
                        block.out_features, 1, False)
    if spec.head_features:
        path = (f"features_{len(spec.blocks) + 1}",)
        if not timm:
            conv, bn = f"{path[0].replace('_', '.')}.0", f"{path[0].replace('_', '.')}.1"
        elif spec.family == "v3":  # timm's final ConvBnAct block is a stage of its own
            conv, bn = f"blocks.{spec.blocks[-1].stage + 1}.0.conv", f"blocks.{spec.blocks[-1].stage + 1}.0.bn1"
        else:
            conv, bn = "conv_head", "bn2"
        out += _conv_bn(path, conv, bn, spec.blocks[-1].out_features, spec.head_features, 1, False)
    if spec.hidden_features:
        out += _dense(("pre_logits",), "conv_head" if timm else "classifier.0", spec.head_features,
                      spec.hidden_features, as_conv1x1=timm)
    if num_classes:
        key = "classifier" if timm else ("classifier.3" if spec.family == "v3" else "classifier.1")
        out += _dense(("classifier",), key, spec.num_features, num_classes)
    return out


def _to_numpy(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        value = value.numpy()
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - report the key, whatever the object was
        raise ConversionError(f"{key}: not a tensor or array ({type(value).__name__}): {error}") from None
    if array.dtype == object:
        raise ConversionError(f"{key}: not a tensor or array ({type(value).__name__})")
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def unwrap_state_dict(checkpoint: Any) -> dict[str, Any]:
    """The state dict inside common wrappers ({'state_dict': ...}, {'model': ...}), 'module.' stripped."""
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"expected a state dict (a mapping of names to tensors), got {type(checkpoint).__name__}")
    for wrapper in WRAPPER_KEYS:
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping) and not any(hasattr(v, "shape") for v in checkpoint.values()):
            return unwrap_state_dict(inner)
    state = dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    if any(k.startswith("features.0.") for k in state_dict):
        return "torchvision"
    if any(k.startswith("conv_stem.") for k in state_dict):
        return "timm"
    sample = ", ".join(list(state_dict)[:5]) or "no keys at all"
    raise ConversionError(f"not a torchvision or timm MobileNet checkpoint: its keys begin {sample}")


def _classes_in(state_dict: Mapping[str, Any], spec: ModelSpec, layout: str) -> int:
    for mapping in tensor_mappings(spec, 1, layout):
        if mapping.flax_path == ("classifier", "kernel"):
            weight = state_dict.get(mapping.torch_key)
            return int(weight.shape[0]) if weight is not None and len(weight.shape) == 2 else 0
    return 0


# Variants tried when guessing what a mismatching checkpoint is.
_GUESS_OVERRIDES = {
    "mobilenet_v1": [dict(width_mult=w) for w in (0.25, 0.5, 0.75, 1.0)],
    "mobilenet_v2": [dict(width_mult=w) for w in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)],
    "mobilenet_v3_large": [dict(width_mult=w, reduced_tail=r) for w in (0.75, 1.0) for r in (False, True)],
    "mobilenet_v3_small": [dict(width_mult=w, reduced_tail=r) for w in (0.75, 1.0) for r in (False, True)],
}


def guess_model(state_dict: Mapping[str, Any]) -> Optional[tuple[str, dict[str, Any], int]]:
    """(name, overrides, num_classes) of the registered model whose keys and shapes the checkpoint fits."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    given = {k for k in shapes if not k.endswith("num_batches_tracked")}
    layout = detect_layout(state_dict)
    for name in list_models():
        if model_entry(name).source != layout:
            continue
        for overrides in _GUESS_OVERRIDES.get(name, [{}]):
            spec = model_spec(name, **overrides)
            num_classes = _classes_in(state_dict, spec, layout)
            expected = {m.torch_key: m.torch_shape for m in tensor_mappings(spec, num_classes, layout)}
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
    num_classes = overrides.pop("num_classes", 1000)
    spec = model_spec(name, **overrides)
    if layout != model_entry(name).source:
        guess = guess_model(state_dict)
        message = f"{name} takes {model_entry(name).source} checkpoints, this one has the {layout} key layout"
        raise ConversionError(message + (f": this looks like a {_describe(guess)} checkpoint" if guess else ""))
    mappings = tensor_mappings(spec, num_classes, layout)

    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    missing, mis_shaped = [], []
    for m in mappings:
        if m.torch_key not in state_dict:
            missing.append(m.torch_key)
            continue
        array = _to_numpy(state_dict[m.torch_key], m.torch_key)
        if tuple(array.shape) != m.torch_shape:
            mis_shaped.append(f"{m.torch_key}: checkpoint has {tuple(array.shape)}, {name} expects {m.torch_shape}")
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


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors of a `.pth`/`.pt`/`.bin` (PyTorch zip or pickle) or `.safetensors` file, as numpy arrays.

    PyTorch files are read with `weights_only=True`: a pickle that would run code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as error:
            raise ConversionError(f"{path}: not a readable safetensors file (truncated or corrupt?): {error}") \
                from None
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading PyTorch files needs torch (pip install torch), or convert the "
                              "file to .safetensors") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"{path}: refused to load: the file holds Python objects beyond tensors, which "
                              f"could run code when unpickled (weights_only=True rejected it: {first_line})") \
            from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") \
            from None
    return {k: _to_numpy(v, k) if hasattr(v, "shape") else v for k, v in unwrap_state_dict(checkpoint).items()}
