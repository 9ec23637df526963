"""StableHLO: `jax.export` of the folded model (post-processing included), weights inside; runs anywhere jax runs,
any batch size."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ARTIFACT = "model.stablehlo"
DEFAULT_BATCH: Optional[int] = None  # batch-polymorphic: a symbolic batch dimension


def check_installed() -> None:
    """jax alone: nothing to check."""


def convert(forward: Callable[[Any], tuple], shape: Sequence[Optional[int]],
            outputs: Sequence[tuple[str, Sequence[int]]]) -> tuple[bytes, str]:
    batch = jax.export.symbolic_shape("batch")[0] if shape[0] is None else shape[0]
    spec = jax.ShapeDtypeStruct((batch, *shape[1:]), jnp.float32)
    single = len(outputs) == 1  # one output is exported bare: `.call(images)` gives the logits themselves
    exported = jax.export.export(jax.jit((lambda x: forward(x)[0]) if single else forward))(spec)
    return exported.serialize(), f"jax.export (jax {jax.__version__})"


def load(data: bytes, names: Sequence[str]) -> tuple[Callable[[Any], dict[str, np.ndarray]], str]:
    call = jax.export.deserialize(bytearray(data)).call

    def run(images: Any) -> dict[str, np.ndarray]:
        outputs = call(images)
        outputs = (outputs,) if len(names) == 1 else outputs
        return {name: np.asarray(output) for name, output in zip(names, outputs, strict=True)}
    return run, f"jax {jax.__version__} ({jax.default_backend()})"
