"""Reading PyTorch checkpoints (.pth / .safetensors) into numpy, and unwrapping common wrappers."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class ConversionError(ValueError):
    """A checkpoint that does not fit the model asked for; the message names every problem."""


def to_numpy(value: Any, key: str) -> np.ndarray:
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


SAFE_ROUTE = ("save the weights as a state dict where the file's own code is installed, e.g. for an ultralytics or "
              "yolov5 checkpoint: python -c \"import torch, safetensors.torch as st; c = torch.load('best.pt', "
              "weights_only=False); m = c.get('ema') or c['model']; st.save_file({k: v.float().contiguous() for k, "
              "v in m.state_dict().items()}, 'best.safetensors')\"")


def read_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any]:
    """Tensors of a `.pth`/`.pt`/`.bin` (PyTorch zip or pickle) or `.safetensors` file, as numpy arrays.

    PyTorch files are read with `weights_only=True`: a pickle that would run code is refused, with the safe route
    named.  `trust_pickle=True` (convert_weights.py --trust-pickle) unpickles a file you trust whole (ultralytics'
    and yolov5's `.pt` checkpoints pickle their model modules, so their code must be importable) and takes the
    state dict of its 'ema' (else 'model') module.
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
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"{path}: refused to load: the file holds Python objects beyond tensors, which "
                              f"could run code when unpickled (weights_only=True rejected it: {first_line}). "
                              f"Safe route: {SAFE_ROUTE}. Or, for a file you trust, pass --trust-pickle "
                              "(read_state_dict(path, trust_pickle=True))") from None
    except ModuleNotFoundError as error:
        raise ConversionError(f"{path}: unpickling it needs the code that saved it ({error}): install that package "
                              f"(e.g. pip install ultralytics) or use the safe route: {SAFE_ROUTE}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}") \
            from None
    if isinstance(checkpoint, Mapping):  # a training checkpoint: its EMA weights, else its model
        module = checkpoint.get("ema") or checkpoint.get("model")
        if hasattr(module, "state_dict"):
            checkpoint = module.float().state_dict()
    elif hasattr(checkpoint, "state_dict"):  # a whole pickled module
        checkpoint = checkpoint.float().state_dict()
    return {k: to_numpy(v, k) if hasattr(v, "shape") else v for k, v in unwrap_state_dict(checkpoint).items()}
