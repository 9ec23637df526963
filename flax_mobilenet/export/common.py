"""What every export format shares: the errors, lazy imports with an install hint, the numeric check."""
from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import Callable, Mapping

import numpy as np

MAX_REL_DIFF = 1e-4  # max|exported - model.apply| / max|model.apply logits| that an export must meet
EXPORT_INSTALL = "pip install -r requirements-export.txt && pip install --no-deps jax2onnx==0.17.1"


class ExportCheckError(ValueError):
    """The exported artifact, run in its own runtime, does not give the model's logits; nothing was written."""


class ConversionError(ValueError):
    """The format's converter failed on the model; the message gives its first error line."""


def conversion_error(format: str, name: str, error: Exception) -> ConversionError:
    """A ConversionError naming the model and the converter's first error line (converters print pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = next((line for line in lines if "error:" in line), lines[0] if lines else type(error).__name__)
    return ConversionError(f"the {format} converter failed on {name} (nothing was written): {first[:500]}")


class MissingConverterError(ImportError):
    """A converter or runtime for the requested format is not installed (the message names the pip command)."""


def require(module: str, purpose: str, install: str = EXPORT_INSTALL) -> ModuleType:
    """Import `module`, or raise MissingConverterError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingConverterError(f"{purpose} needs the Python package '{module}', which is not installed "
                                    f"({error}); install the export requirements: {install}") from error


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def relative_difference(got: np.ndarray, expected: np.ndarray) -> float:
    """max|got - expected| / max|expected| (inf for a shape mismatch, nan if got has NaNs)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), np.finfo(np.float32).tiny))


def check_outputs(run: Callable[[np.ndarray], Mapping[str, np.ndarray]], images: np.ndarray,
                  expected: Mapping[str, np.ndarray], what: str, runtime: str) -> float:
    """Run the export on `images`; raise ExportCheckError unless each of the `expected` outputs is within
    MAX_REL_DIFF of it; returns the largest relative difference."""
    got = run(images)
    worst = 0.0
    for name, reference in expected.items():
        output = np.asarray(got[name])
        diff = relative_difference(output, reference)
        if not diff <= MAX_REL_DIFF:  # also catches NaN
            detail = (f"output shape {output.shape}, expected {reference.shape}" if output.shape != reference.shape
                      else f"max|diff| / max|{name}| = {diff:.3g}")
            raise ExportCheckError(f"the {what} export does not reproduce the model in {runtime}: {detail} > "
                                   f"{MAX_REL_DIFF:g} on a batch of {len(images)} (nothing was written)")
        worst = max(worst, diff)
    return worst
