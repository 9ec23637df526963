"""Serialized StableHLO (jax.export) of the folded model: runs with jax alone, no model code."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from .inference import folded_model
from .registry import weights_info

ARTIFACT_FILE = "model.stablehlo"
METADATA_FILE = "export.json"


def export_model(name: str, variables: dict[str, Any], output: str | os.PathLike, batch_size: Optional[int] = None,
                 image_size: Optional[int] = None, **overrides: Any) -> Path:
    """Write OUTPUT/model.stablehlo (weights inside) and OUTPUT/export.json (the input contract).

    `batch_size=None` exports a batch-polymorphic function; any batch size then runs.  `image_size`
    defaults to the crop size the model's weights were evaluated at; export.json states their transform.
    """
    transform = weights_info(name).at_size(image_size)
    image_size = transform.crop_size
    model, folded = folded_model(name, variables, **overrides)
    batch = jax.export.symbolic_shape("batch")[0] if batch_size is None else batch_size
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    exported = jax.export.export(jax.jit(lambda x: model.apply(folded, x)))(spec)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / ARTIFACT_FILE).write_bytes(exported.serialize())
    metadata = {
        "model": name, "overrides": {k: v for k, v in overrides.items() if k != "num_classes"},
        "num_classes": overrides.get("num_classes", 1000),
        "input": {"layout": "NHWC", "dtype": "float32", "shape": ["batch" if batch_size is None else batch_size,
                                                                 image_size, image_size, 3],
                  "preprocessing": transform.describe(), "resize_size": transform.resize_size,
                  "crop_size": transform.crop_size, "interpolation": transform.interpolation,
                  "mean": transform.mean, "std": transform.std},
        "labels": transform.labels,
        "output": "logits (batch, num_classes), float32; softmax gives probabilities",
        "jax_version": jax.__version__,
    }
    (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return output


def load_exported(path: str | os.PathLike) -> Callable[[Any], jax.Array]:
    """The exported function (images -> logits); needs only jax."""
    artifact = Path(path) / ARTIFACT_FILE
    if not artifact.is_file():
        raise FileNotFoundError(f"no {ARTIFACT_FILE} in {path}: expected a folder written by export.py")
    return jax.export.deserialize(bytearray(artifact.read_bytes())).call
