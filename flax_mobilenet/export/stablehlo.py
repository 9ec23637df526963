"""StableHLO: `jax.export` of the folded model, weights inside; runs anywhere jax runs, any batch size."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

ARTIFACT = "model.stablehlo"
DEFAULT_BATCH: Optional[int] = None  # batch-polymorphic: a symbolic batch dimension


def check_installed() -> None:
    """jax alone: nothing to check."""


def convert(model: Any, variables: Any, shape: Sequence[Optional[int]],
            output_shape: Sequence[int]) -> tuple[bytes, str]:
    batch = jax.export.symbolic_shape("batch")[0] if shape[0] is None else shape[0]
    spec = jax.ShapeDtypeStruct((batch, *shape[1:]), jnp.float32)
    exported = jax.export.export(jax.jit(lambda x: model.apply(variables, x)))(spec)
    return exported.serialize(), f"jax.export (jax {jax.__version__})"


def load(data: bytes) -> tuple[Callable[[Any], Any], str]:
    return jax.export.deserialize(bytearray(data)).call, f"jax {jax.__version__} ({jax.default_backend()})"
