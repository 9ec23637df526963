"""The fastest inference path: BatchNorm folded into the convs, compiled ahead of time."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any, Callable, ContextManager

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from ..backbones.builder import MobileNet, check_images
from ..registry import create_model
from .fold import batchnorm_eps, fold_batchnorm

CACHE_DIR_VARIABLE = "FLAX_MOBILENET_CACHE_DIR"
MIN_CACHED_COMPILE_SECONDS = 0.3

# Per-compile XLA:CPU option: YNNPACK takes matrix products (the 1x1 convs are dot_generals) and
# reductions (pooling, squeeze-excite), but not convolutions.  By default it also takes the dense
# stem convolution (3 input channels), which it runs 2-3x slower than XLA's own convolution
# (MobileNetV2 stem at batch 32: 60 vs 25 ms).  Without YNNPACK reductions, XLA fuses each
# depthwise conv into its squeeze-excite pooling and MobileNetV3-Large gets 10% slower.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
# The arithmetic of float32 convs and matmuls, as JAX names its levels (`jax.default_matmul_precision`).  CPUs
# compute full float32 at every level; GPUs and TPUs round the products at the lower ones.
PRECISIONS = {
    "highest": "full float32 products (TPU: 6 bfloat16 passes; GPU: no TF32)",
    "high": "TF32 on NVIDIA GPUs since Ampere, 3 bfloat16 passes on TPU",
    "default": "the backend's fastest: TF32 on NVIDIA GPUs since Ampere, 1 bfloat16 pass on TPU",
}
# The converter's promise (~1e-6 to PyTorch in float64) holds on every backend only at 'highest'.
DEFAULT_PRECISION = "highest"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
GLIBC_MAX_MMAP_THRESHOLD = 32 << 20  # blocks above this are always fresh mmaps (64-bit glibc)


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache for our CLIs: a rerun (or a resumed training run) loads, not compiles."""
    directory = os.environ.get(CACHE_DIR_VARIABLE) or Path.home() / ".cache" / "flax_mobilenet" / "jax"
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # JAX caches only compiles over 1 s by default; a whole model can compile faster than that and
    # would then be compiled again on every run.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_SECONDS)


def check_precision(precision: str) -> str:
    """`precision` if it is one of PRECISIONS, else a ValueError listing them with what each means."""
    if precision not in PRECISIONS:
        choices = "; ".join(f"'{name}': {meaning}" for name, meaning in PRECISIONS.items())
        raise ValueError(f"unknown precision {precision!r}; use one of {choices}")
    return precision


def matmul_precision(precision: str) -> ContextManager:
    """The context in which to trace a function so that its convs and matmuls use `precision` (one of PRECISIONS).

    It is recorded per op in the lowered HLO (`precision_config`), so it holds wherever the compiled function or a
    StableHLO export of it runs.
    """
    return jax.default_matmul_precision(check_precision(precision))


def keep_freed_host_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of giving it back to the OS (process-wide).

    XLA:CPU allocates its temporary buffers on every call.  Blocks above glibc's mmap threshold
    (32 MiB at most) are fresh mmaps whose pages fault in zero-filled on every call, which made
    a C=96 ReLU6 over 32x56x56 take 10.6 ms instead of 1.7 ms and MobileNetV3-Small at batch 32
    80 instead of 64 ms.  The cost: the process keeps its peak heap.  Returns whether it applied
    (glibc only; elsewhere nothing changes).
    """
    try:
        is_glibc = "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    except (AttributeError, ValueError, OSError):  # not Linux, or another libc
        is_glibc = False
    if not is_glibc:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 40))


def split_cpu_into_devices(count: int | None = None) -> None:
    """Expose each CPU core as a JAX device (call before JAX first touches a device).

    `compile_inference` then splits a batch over the devices.  Measure before using it: on a 2-core
    AMD VM alone in a process V3-Small batch 32 went 130 -> 86 ms, but on the 2-core Xeon every
    model at batch 32 got 2x slower, so nothing turns it on by default.
    """
    flag = f"--xla_force_host_platform_device_count={count or os.cpu_count() or 1}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def folded_model(name: str, variables: dict[str, Any], **overrides: Any) -> tuple[MobileNet, dict[str, Any]]:
    """The `fold_bn=True` model and its folded variables (each norm's own eps): what every inference path runs."""
    eps = batchnorm_eps(create_model(name, **overrides))
    return create_model(name, fold_bn=True, **overrides), fold_batchnorm(variables, eps)


def _temp_bytes(compiled: jax.stages.Compiled) -> int:
    analysis = compiled.memory_analysis()
    return getattr(analysis, "temp_size_in_bytes", 0) if analysis is not None else 0


def _compile_for_cpu(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    try:
        return lowered.compile(CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError:  # an XLA without the option: its defaults are correct, just slower
        return lowered.compile()


def compile_inference(name: str, variables: dict[str, Any], batch_size: int = 1, image_size: int | tuple[int, int] = 224,
                      keep_host_memory: bool = True, precision: str = DEFAULT_PRECISION,
                      **overrides: Any) -> Callable[[Any], jax.Array]:
    """`fn(images_nhwc_float32) -> logits`, equal to `model.apply(variables, x, train=False)`.

    Segmentation and detection models return what `apply` returns (per-pixel logits; raw head outputs, which
    `model.postprocessor(size)` turns into detections).

    BatchNorm is folded into the convs, the depthwise form is the backend's fastest, and the
    function is compiled now for (batch_size, image_size, image_size, 3) float32 inputs.  With
    several local devices (see `split_cpu_into_devices`) the batch is split over those it divides.
    On CPU, when a call's temporary buffers exceed 32 MiB (batch 8 and up at 224x224),
    `keep_freed_host_memory` is applied (process-wide) unless `keep_host_memory` is False; at
    batch 1 it made calls 15% slower (measured in separate processes), so it is left alone there.

    `precision` (PRECISIONS) sets the arithmetic of every conv and matmul (`fn.compiled.as_text()` shows it).
    'highest' keeps the logits within ~1e-6 of float64 on any backend; 'default' lets GPUs use TF32 and TPUs one
    bfloat16 pass: faster there, but MobileNetV3-Large's logits moved 2.5e-4 relative on an H200.  CPUs compute
    the same at every level.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    model, folded = folded_model(name, variables, **overrides)
    shape = (batch_size, height, width, 3)
    check_images(jax.ShapeDtypeStruct(shape, jnp.float32))
    devices = jax.local_devices()
    parts = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
    mesh = jax.make_mesh((parts,), ("batch",), devices=devices[:parts])
    replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))
    folded = jax.device_put(folded, replicated)
    with matmul_precision(precision):
        lowered = jax.jit(lambda v, x: model.apply(v, x), in_shardings=(replicated, split), out_shardings=replicated) \
            .lower(folded, jax.ShapeDtypeStruct(shape, jnp.float32))
    if jax.default_backend() != "cpu":
        compiled = lowered.compile()
    else:
        compiled = _compile_for_cpu(lowered)
        if keep_host_memory and _temp_bytes(compiled) > GLIBC_MAX_MMAP_THRESHOLD:
            keep_freed_host_memory()

    def predict(images: Any) -> jax.Array:
        if tuple(getattr(images, "shape", ())) != shape:
            raise ValueError(f"this function was compiled for images of shape {shape} (NHWC), got "
                             f"{tuple(getattr(images, 'shape', ()))}; compile another with compile_inference")
        return compiled(folded, jnp.asarray(images, jnp.float32))

    predict.compiled = compiled  # the executable: its HLO (`as_text()`), `cost_analysis()`, `memory_analysis()`
    return predict
