"""How a layer's tensors are named and laid out in a PyTorch state dict, and where they go in Flax.

Each block kind describes its tensors with these helpers; `convert` matches them against a
checkpoint.  Pure numpy: nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import numpy as np

FlaxPath = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    torch_key: str
    torch_shape: tuple[int, ...]
    collection: str  # 'params' | 'batch_stats' ('' for a fixed tensor)
    flax_path: FlaxPath
    to_flax: Callable[[np.ndarray], np.ndarray]
    fixed: Optional[np.ndarray] = None  # a tensor the reference stores but never trains: checked, not loaded
    fixed_hint: Optional[Callable[[np.ndarray], str]] = None  # what to do when the checkpoint's value differs


def conv_to_hwio(w: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO; a depthwise (C, 1, k, k) kernel becomes (k, k, 1, C)."""
    return w.transpose(2, 3, 1, 0)


def conv1x1_to_dense(w: np.ndarray) -> np.ndarray:
    """(out, in, 1, 1) -> (in, out)."""
    return w[:, :, 0, 0].T


def linear_to_dense(w: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out)."""
    return w.T


def same(w: np.ndarray) -> np.ndarray:
    return w


def join(*parts: str) -> str:
    """PyTorch module path from parts, skipping empty ones: join('features.3', 'conv.0') = 'features.3.conv.0'."""
    return ".".join(p for p in parts if p)


def conv(flax_path: FlaxPath, key: str, in_ch: int, out_ch: int, kernel: int, groups: int = 1,
         bias: bool = False) -> Iterator[TensorMapping]:
    """A Conv2d (`groups` = channels for depthwise) as FLAX_PATH/kernel (+ bias)."""
    yield TensorMapping(key + ".weight", (out_ch, in_ch // groups, kernel, kernel), "params", (*flax_path, "kernel"),
                        conv_to_hwio)
    if bias:
        yield TensorMapping(key + ".bias", (out_ch,), "params", (*flax_path, "bias"), same)


def batch_norm(flax_path: FlaxPath, key: str, channels: int) -> Iterator[TensorMapping]:
    for torch_name, collection, flax_name in (("weight", "params", "scale"), ("bias", "params", "bias"),
                                              ("running_mean", "batch_stats", "mean"),
                                              ("running_var", "batch_stats", "var")):
        yield TensorMapping(f"{key}.{torch_name}", (channels,), collection, (*flax_path, flax_name), same)


def layer_norm(flax_path: FlaxPath, key: str, channels: int) -> Iterator[TensorMapping]:
    yield TensorMapping(key + ".weight", (channels,), "params", (*flax_path, "scale"), same)
    yield TensorMapping(key + ".bias", (channels,), "params", (*flax_path, "bias"), same)


def fixed(key: str, value: np.ndarray,
          hint: Optional[Callable[[np.ndarray], str]] = None) -> Iterator[TensorMapping]:
    """A constant the reference keeps in its state dict (ultralytics' DFL weights, arange(16)): the converter
    checks the checkpoint holds exactly this value and loads nothing (the Flax module computes with it).
    `hint(checkpoint_value)` tells the user what to do when it differs (yolov5's anchors: an override)."""
    value = np.asarray(value)
    yield TensorMapping(key, tuple(value.shape), "", (), same, value, hint)


def conv_norm(flax_path: FlaxPath, conv_key: str, norm_key: str, in_ch: int, out_ch: int, kernel: int,
              depthwise: bool = False) -> Iterator[TensorMapping]:
    """A `layers.ConvNormAct`: the conv (no bias) at FLAX_PATH/conv, its BatchNorm at FLAX_PATH/bn."""
    yield from conv((*flax_path, "conv"), conv_key, in_ch, out_ch, kernel, groups=out_ch if depthwise else 1)
    yield from batch_norm((*flax_path, "bn"), norm_key, out_ch)


def dense(flax_path: FlaxPath, key: str, in_ch: int, out_ch: int, as_conv1x1: bool = False,
          bias: bool = True) -> Iterator[TensorMapping]:
    """An nn.Dense from a Linear, or from a 1x1 Conv2d (`as_conv1x1`)."""
    shape = (out_ch, in_ch, 1, 1) if as_conv1x1 else (out_ch, in_ch)
    yield TensorMapping(key + ".weight", shape, "params", (*flax_path, "kernel"),
                        conv1x1_to_dense if as_conv1x1 else linear_to_dense)
    if bias:
        yield TensorMapping(key + ".bias", (out_ch,), "params", (*flax_path, "bias"), same)
