"""Export the folded model (BatchNorm folded into the convs, weights inside) as StableHLO, ONNX or TFLite.

`export_model(name, variables, output, format=...)` writes OUTPUT/model.{stablehlo,onnx,tflite} and
OUTPUT/export.json (the input contract).  Every export is checked before anything is written: the artifact
runs in its own runtime (jax, ONNX Runtime, LiteRT) on a fixed random batch of normalized-image-like inputs
and must give `model.apply`'s logits to max|diff| / max|logit| <= 1e-4 (ExportCheckError otherwise); the
measured difference goes into export.json.  Files are written atomically (temporary file + os.replace).

The ONNX and TFLite converters are optional (requirements-export.txt) and imported only when used.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

import jax
import numpy as np

from ..inference import folded_model
from ..registry import model_spec, weights_info
from ..weights import WeightsInfo
from .common import (EXPORT_INSTALL, MAX_REL_DIFF, ConversionError, ExportCheckError, MissingConverterError,
                     check_outputs, conversion_error)

FORMATS = ("stablehlo", "onnx", "tflite")
ARTIFACT_FILES = {"stablehlo": "model.stablehlo", "onnx": "model.onnx", "tflite": "model.tflite"}
ARTIFACT_FILE = ARTIFACT_FILES["stablehlo"]
METADATA_FILE = "export.json"
CHECK_SEED = 0
CHECK_BATCH = 2  # the checked batch when the export takes any batch size

__all__ = ["ARTIFACT_FILE", "ARTIFACT_FILES", "CHECK_SEED", "EXPORT_INSTALL", "FORMATS", "MAX_REL_DIFF",
           "METADATA_FILE", "ConversionError", "ExportCheckError", "MissingConverterError", "check_images", "export_model",
           "load_exported"]


def _backend(format: str) -> ModuleType:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; one of {', '.join(FORMATS)}")
    return importlib.import_module(f"{__name__}.{format}")


def check_images(transform: WeightsInfo, batch: int, seed: int = CHECK_SEED) -> np.ndarray:
    """A fixed random NHWC batch that looks like preprocessed images: uniform pixels, normalized by mean/std."""
    pixels = np.random.default_rng(seed).random((batch, transform.crop_size, transform.crop_size, 3))
    return ((pixels - np.asarray(transform.mean)) / np.asarray(transform.std)).astype(np.float32)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def export_model(name: str, variables: dict[str, Any], output: str | os.PathLike, batch_size: Optional[int] = None,
                 image_size: Optional[int] = None, format: str = "stablehlo", transform: Optional[WeightsInfo] = None,
                 class_names: Optional[list[str]] = None, **overrides: Any) -> Path:
    """Write OUTPUT/model.<format> (weights inside) and OUTPUT/export.json (the input contract); returns OUTPUT.

    `batch_size=None`: any batch size for StableHLO and ONNX (a symbolic batch), batch 1 for TFLite (whose
    converter needs a fixed batch).  `transform` is the eval preprocessing export.json states (default: the
    reference weights' of the model; a training run passes its own, `checkpoint.eval_transform`) and
    `image_size` overrides its crop size; `class_names` go into export.json (a training run's labels).  Inputs are NHWC float32, outputs logits.  Raises ExportCheckError
    (writing nothing) if the artifact's logits differ from `model.apply`'s by more than 1e-4 relative, and
    MissingConverterError (naming the pip command) if the format's converter or runtime is not installed.
    """
    backend = _backend(format)
    task = model_spec(name, **overrides).task
    if task != "classification":
        raise ValueError(f"{name} is a {task} model; export covers classifiers only so far")
    backend.check_installed()
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    transform = (transform or weights_info(name)).at_size(image_size)
    size = transform.crop_size
    model_options = dict(overrides)
    if format != "stablehlo":  # XLA's grouped conv: one Conv / DEPTHWISE_CONV_2D op per depthwise conv (the
        model_options["depthwise_impl"] = "lax"  # same numbers as 'slices', which XLA:CPU runs faster)
    model, folded = folded_model(name, variables, **model_options)
    batch = backend.DEFAULT_BATCH if batch_size is None else batch_size
    images = check_images(transform, batch or CHECK_BATCH)
    with jax.default_matmul_precision("highest"):  # GPUs would otherwise round the reference to TF32
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(folded, images))
    try:
        data, converter = backend.convert(model, folded, (batch, size, size, 3), expected.shape[1:])
    except MissingConverterError:
        raise
    except Exception as error:  # noqa: BLE001 - each converter raises its own types; name the model and line
        raise conversion_error(format, name, error) from error
    run, runtime = backend.load(data)
    difference = check_outputs(run, images, expected, format, runtime)

    shape = ["batch" if batch is None else batch, size, size, 3]
    metadata = {
        "model": name, "overrides": {k: v for k, v in overrides.items() if k != "num_classes"},
        "num_classes": overrides.get("num_classes", 1000),
        "format": format, "artifact": backend.ARTIFACT, "converter": converter,
        "input": {"layout": "NHWC", "dtype": "float32", "shape": shape,
                  "preprocessing": transform.describe(), "resize_size": transform.resize_size,
                  "crop_size": transform.crop_size, "interpolation": transform.interpolation,
                  "mean": transform.mean, "std": transform.std},
        "labels": list(class_names) if class_names else transform.labels,
        "output": "logits (batch, num_classes), float32; softmax gives probabilities",
        "check": {"runtime": runtime, "batch": len(images), "seed": CHECK_SEED,
                  "inputs": "uniform [0, 1) pixels normalized with the mean/std above",
                  "reference": f"model.apply of the folded variables (jax {jax.__version__})",
                  "max_rel_diff": difference, "tolerance": MAX_REL_DIFF},
        "jax_version": jax.__version__,
    }
    if format != "stablehlo":
        metadata["input"]["name"] = "images"
    if format == "onnx":
        metadata["output_name"] = "logits"
    if format == "tflite":
        metadata["input"]["batch_note"] = ("fixed batch: TFLite's converter cannot take a batch-polymorphic "
                                           "model; export again with --batch-size N for another batch")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    _write_atomically(output / backend.ARTIFACT, data)
    _write_atomically(output / METADATA_FILE, (json.dumps(metadata, indent=2) + "\n").encode())
    return output


def load_exported(path: str | os.PathLike) -> Callable[[Any], Any]:
    """The exported function (images -> logits) in its runtime: jax for StableHLO, ONNX Runtime, LiteRT."""
    folder = Path(path)
    metadata = folder / METADATA_FILE
    format = json.loads(metadata.read_text()).get("format", "stablehlo") if metadata.is_file() else "stablehlo"
    backend = _backend(format)
    artifact = folder / backend.ARTIFACT
    if not artifact.is_file():
        raise FileNotFoundError(f"no {backend.ARTIFACT} in {path}: expected a folder written by export.py")
    return backend.load(artifact.read_bytes())[0]
