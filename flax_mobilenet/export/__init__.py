"""Export the folded model (BatchNorm folded into the convs, weights inside) as StableHLO, ONNX or TFLite.

`export_model(name, variables, output, format=...)` writes OUTPUT/model.{stablehlo,onnx,tflite} and
OUTPUT/export.json (the input contract and the named outputs).  Classifiers export logits, segmentation models
per-pixel logits, detection models their detections (the post-processing inside) and raw head outputs.  Every
export is checked before anything is written: the artifact runs in its own runtime (jax, ONNX Runtime,
LiteRT) on a fixed random batch of normalized-image-like inputs and must give `model.apply`'s logits (a
detection model: its raw outputs) to max|diff| / max|value| <= 1e-4 (ExportCheckError otherwise); the
measured difference goes into export.json.  Files are written atomically (temporary file + os.replace).

The ONNX and TFLite converters are optional (requirements-export.txt) and imported only when used.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

import jax
import numpy as np

from ..heads.ssdlite import ANCHORS_FILE  # noqa: F401  (public here since the first detection export)
from ..inference import DEFAULT_PRECISION, check_precision, folded_model, matmul_precision
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


@dataclasses.dataclass(frozen=True)
class _Graph:
    """What an export computes: images -> named outputs, and which of them the numeric check compares."""

    forward: Callable[[Any], tuple]
    outputs: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape without the batch, meaning)
    checked: tuple[str, ...]


def _graph(model: Any, folded: Any, task: str, size: int, postprocess: bool, nms_method: Any) -> _Graph:
    spec = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    if task != "detection":
        def logits(x: Any) -> jax.Array:  # DeepLabV3's auxiliary head ('aux') is for training: left out
            outputs = model.apply(folded, x)
            return outputs["out"] if isinstance(outputs, dict) else outputs

        shape = jax.eval_shape(logits, spec).shape[1:]
        meaning = ("logits (batch, num_classes), float32; softmax gives probabilities" if task == "classification"
                   else "logits (batch, height, width, num_classes) at the input size, float32; argmax over the "
                        "last axis gives the class of each pixel")
        return _Graph(lambda x: (logits(x),), (("logits", shape, meaning),), ("logits",))
    head = model.detection_head
    raw_names = [name for name, _ in head.raw_outputs(model.num_classes)]
    raw = jax.eval_shape(lambda x: model.apply(folded, x), spec)
    raw_outputs = tuple((name, raw[name].shape[1:], meaning) for name, meaning in head.raw_outputs(model.num_classes))

    def raw_only(x: Any) -> tuple:
        outputs = model.apply(folded, x)
        return tuple(outputs[name] for name in raw_names)

    if not postprocess:
        return _Graph(raw_only, raw_outputs, tuple(raw_names))
    postprocessor = model.postprocessor((size, size), nms_method=nms_method)

    def forward(x: Any) -> tuple:
        outputs = model.apply(folded, x)
        found = postprocessor(outputs)
        return (*found, *(outputs[name] for name in raw_names))

    detections = jax.eval_shape(lambda x: postprocessor(model.apply(folded, x)), spec)
    return _Graph(forward, (
        ("boxes", detections.boxes.shape[1:], "(batch, detections, 4) float32 xyxy in input pixels, best first"),
        ("scores", detections.scores.shape[1:], "(batch, detections) float32, decreasing"),
        ("labels", detections.labels.shape[1:], "(batch, detections) int32 class ids (0 in padding rows)"),
        ("num_valid", (), "(batch,) int32: rows of boxes/scores/labels that are detections, the rest is padding"),
        *raw_outputs), tuple(raw_names))


def export_model(name: str, variables: dict[str, Any], output: str | os.PathLike, batch_size: Optional[int] = None,
                 image_size: Optional[int] = None, format: str = "stablehlo", transform: Optional[WeightsInfo] = None,
                 class_names: Optional[list[str]] = None, postprocess: bool = True,
                 precision: str = DEFAULT_PRECISION, **overrides: Any) -> Path:
    """Write OUTPUT/model.<format> (weights inside) and OUTPUT/export.json (the input contract); returns OUTPUT.

    `batch_size=None`: any batch size for StableHLO and ONNX (a symbolic batch), batch 1 for TFLite (whose
    converter needs a fixed batch).  `transform` is the eval preprocessing export.json states (default: the
    reference weights' of the model; a training run passes its own, `checkpoint.eval_transform`) and
    `image_size` overrides its crop size; `class_names` go into export.json (a training run's labels).

    Inputs are NHWC float32.  Outputs: a classifier's logits; a segmentation model's per-pixel logits at the
    input size (DeepLabV3's auxiliary head is left out); a detection model's detections (boxes, scores,
    labels, num_valid: the post-processing inside, static shapes) followed by its raw head outputs, or the raw
    outputs alone with `postprocess=False` (anchors.npy written beside them).  Raises ExportCheckError (writing
    nothing) if the artifact's logits (detection: raw outputs) differ from `model.apply`'s by more than 1e-4
    relative, and MissingConverterError (naming the pip command) if the converter or runtime is not installed.

    `precision` (`inference.PRECISIONS`) is written into the StableHLO artifact's convs and matmuls, so it holds on
    whatever backend runs it ('highest': float64-close everywhere; 'default': TF32 / bfloat16 on GPUs / TPUs).  ONNX
    and TFLite files have no such setting (float32 ops; the runtime picks its kernels): they take 'highest' only.
    """
    backend = _backend(format)
    if format != "stablehlo" and check_precision(precision) != "highest":
        raise ValueError(f"precision {precision!r} applies to the StableHLO export only: a {format} file holds plain "
                         f"float32 convs and matmuls, and its runtime chooses their arithmetic; keep precision "
                         f"'highest' (the default) or export --format stablehlo")
    task = model_spec(name, **overrides).task
    if task == "detection" and postprocess and format == "tflite":
        raise ValueError(f"{name}: TFLite's converter cannot convert the detection post-processing (its NMS "
                         f"loop); export the raw head outputs (--raw-outputs; postprocess=False) or use --format "
                         f"onnx or stablehlo, which include it")
    backend.check_installed()
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    transform = (transform or weights_info(name)).at_size(image_size)
    size = transform.crop_size
    model_options = dict(overrides)
    if format != "stablehlo":  # XLA's grouped conv: one Conv / DEPTHWISE_CONV_2D op per depthwise conv (the
        model_options["depthwise_impl"] = "lax"  # same numbers as 'slices', which XLA:CPU runs faster)
    model, folded = folded_model(name, variables, **model_options)
    nms_method = getattr(backend, "detection_nms", lambda: "greedy")()  # ONNX: its NonMaxSuppression op
    graph = _graph(model, folded, task, size, postprocess, nms_method)
    names = [output_name for output_name, _, _ in graph.outputs]
    batch = backend.DEFAULT_BATCH if batch_size is None else batch_size
    images = check_images(transform, batch or CHECK_BATCH)
    # The reference computes at the export's precision (ONNX/TFLite: full float32), so a StableHLO export at
    # 'default' on a GPU is checked against TF32 logits, not failed for them; only StableHLO records a precision.
    with matmul_precision(precision):
        reference = dict(zip(names, jax.device_get(jax.jit(graph.forward)(images))))
    try:
        with matmul_precision(precision) if format == "stablehlo" else contextlib.nullcontext():
            data, converter = backend.convert(graph.forward, (batch, size, size, 3),
                                              [(output_name, shape) for output_name, shape, _ in graph.outputs])
    except MissingConverterError:
        raise
    except Exception as error:  # noqa: BLE001 - each converter raises its own types; name the model and line
        raise conversion_error(format, name, error) from error
    run, runtime = backend.load(data, names)
    difference = check_outputs(run, images, {k: np.asarray(reference[k]) for k in graph.checked}, format, runtime)

    batch_dim = "batch" if batch is None else batch
    metadata = {
        "model": name, "task": task, "overrides": {k: v for k, v in overrides.items() if k != "num_classes"},
        "num_classes": model.num_classes,
        "format": format, "artifact": backend.ARTIFACT, "converter": converter,
        "input": {"layout": "NHWC", "dtype": "float32", "shape": [batch_dim, size, size, 3],
                  "preprocessing": transform.describe(), "resize_size": transform.resize_size,
                  "crop_size": transform.crop_size, "interpolation": transform.interpolation,
                  "mean": transform.mean, "std": transform.std},
        "labels": list(class_names) if class_names else transform.labels,
        "outputs": [{"name": output_name, "shape": [batch_dim, *shape], "meaning": meaning}
                    for output_name, shape, meaning in graph.outputs],
        "check": {"runtime": runtime, "batch": len(images), "seed": CHECK_SEED, "outputs": list(graph.checked),
                  "inputs": "uniform [0, 1) pixels normalized with the mean/std above",
                  "reference": f"model.apply of the folded variables (jax {jax.__version__}, precision "
                               f"{precision!r})",
                  "max_rel_diff": difference, "tolerance": MAX_REL_DIFF},
        "jax_version": jax.__version__,
    }
    if task == "classification":
        metadata["output"] = graph.outputs[0][2]
    if format == "stablehlo":
        metadata["precision"] = precision
    else:
        metadata["input"]["name"] = "images"
    if format == "tflite":
        metadata["input"]["batch_note"] = ("fixed batch: TFLite's converter cannot take a batch-polymorphic "
                                           "model; export again with --batch-size N for another batch")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    _write_atomically(output / backend.ARTIFACT, data)
    if task == "detection" and not postprocess:  # what decoding the raw outputs needs (SSD: its anchors)
        for file_name, (array, meaning) in model.detection_head.side_files((size, size)).items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            _write_atomically(output / file_name, buffer.getvalue())
            metadata.setdefault("side_files", {})[file_name] = meaning
    _write_atomically(output / METADATA_FILE, (json.dumps(metadata, indent=2) + "\n").encode())
    return output


def load_exported(path: str | os.PathLike) -> Callable[[Any], Any]:
    """The exported function in its runtime (jax for StableHLO, ONNX Runtime, LiteRT): images -> logits for
    a classifier or segmentation model, -> {output name: array} for a detection model (export.json)."""
    folder = Path(path)
    file = folder / METADATA_FILE
    metadata = json.loads(file.read_text()) if file.is_file() else {}
    backend = _backend(metadata.get("format", "stablehlo"))
    artifact = folder / backend.ARTIFACT
    if not artifact.is_file():
        raise FileNotFoundError(f"no {backend.ARTIFACT} in {path}: expected a folder written by export.py")
    names = [entry["name"] for entry in metadata.get("outputs", [{"name": "logits"}])]
    run = backend.load(artifact.read_bytes(), names)[0]
    if names == ["logits"]:
        return lambda images: run(images)["logits"]
    return run
