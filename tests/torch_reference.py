"""Import the real torchvision and timm model definitions on a CPU-only torch.

PyPI's torchvision wheel registers compiled ops that need a CUDA torch, so a plain
`import torchvision` fails here ("operator torchvision::nms does not exist").  Its
model definitions are pure Python: we register an empty `torchvision` package that
points at the installed folder, which skips `torchvision/__init__.py` (and its ops).
timm imports torchvision too, so it goes through the same door.
"""
from __future__ import annotations

import importlib.util
import sys
import types

try:
    import torch
except ImportError as error:  # fail loudly: CI installs torch, a skipped parity test proves nothing
    raise ImportError("PyTorch is needed for the parity tests: bash scripts/setup.sh "
                      "(or pip install -r requirements-dev.txt)") from error


def _install_torchvision_shim() -> None:
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed (pip install -r requirements-dev.txt)")
    package = types.ModuleType("torchvision")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__version__ = "shim"
    sys.modules["torchvision"] = package


_install_torchvision_shim()

import timm  # noqa: E402
import torchvision.models as tv_models  # noqa: E402
import torchvision.models.segmentation as tv_segmentation  # noqa: E402

__all__ = ["torch", "timm", "tv_models", "tv_segmentation"]

import numpy as np  # noqa: E402


def randomize_(model: "torch.nn.Module", seed: int = 0, keep=lambda name: False) -> "torch.nn.Module":
    """Give every bias, BN affine parameter and BN running statistic non-trivial values, eval mode.

    Default inits leave biases at 0 and BN at identity, which would hide a mis-mapped tensor.  `keep(name)`:
    entries left as they are (constants of the architecture, e.g. ultralytics' DFL weights).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or keep(name):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1:  # BN scale
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.ndim == 2:  # linear layers: torchvision inits them at std 0.01
                tensor.copy_(noise / tensor.shape[1] ** 0.5)
    return model.eval()


def torch_forward(model: "torch.nn.Module", images_nhwc: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def torch_features(features: "torch.nn.Sequential", images_nhwc: np.ndarray) -> list[np.ndarray]:
    """Output of every layer of a torchvision `features` Sequential, NHWC."""
    outputs = []
    with torch.inference_mode():
        x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
        for layer in features:
            x = layer(x)
            outputs.append(x.numpy().transpose(0, 2, 3, 1))
    return outputs
