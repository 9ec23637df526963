"""Memory preflight: before the first step, what the compiled train and eval steps will allocate against what the
devices have, so that a run too big for the machine stops with the batch size that fits instead of an XLA
RESOURCE_EXHAUSTED traceback (or the kernel's OOM killer) minutes later."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import jax

from .experiment import ConfigError

GIB = float(1 << 30)
HEADROOM = 0.9  # of the free memory: the allocator fragments, the input pipeline and Python take some too


class MemoryPreflightError(ConfigError):
    """The configured steps need more memory than the devices have."""


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """What one call of a compiled step allocates per device beyond what already lives there (the state)."""

    temporaries: int
    outputs: int  # not aliased to a donated input

    @property
    def total(self) -> int:
        return self.temporaries + self.outputs

    @classmethod
    def of(cls, compiled: jax.stages.Compiled) -> Optional["StepMemory"]:
        stats = compiled.memory_analysis()
        if stats is None:  # a backend without buffer assignment statistics
            return None
        return cls(int(stats.temp_size_in_bytes),
                   max(int(stats.output_size_in_bytes) - int(stats.alias_size_in_bytes), 0))


def free_memory(device: jax.Device) -> tuple[Optional[int], str]:
    """(bytes free for one device, where that number comes from). CPU devices share the host's available memory."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.device_kind} memory"
    available = _host_available()
    if available is None:
        return None, "host memory"
    return available // max(jax.local_device_count(), 1), "available host memory" + (
        f" / {jax.local_device_count()} devices" if jax.local_device_count() > 1 else "")


def _host_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def check(name: str, flag: str, need: Optional[StepMemory], batch_size: int, batch_bytes: int,
          need_at: Callable[[int], Optional[StepMemory]], granularity: int, image_size: int) -> Optional[str]:
    """Raise MemoryPreflightError when the `name` step at global `batch_size` (config key `flag`; plus `batch_bytes`
    of input buffers per device) does not fit one device's free memory; the largest batch that fits is computed
    from a second compile at a smaller batch (`need_at`, a linear fit: fixed + per-example). Returns a note when
    nothing could be checked."""
    if need is None:
        return f"memory preflight: the {jax.default_backend()} backend reports no buffer sizes; not checked"
    free, where = free_memory(jax.local_devices()[0])
    if free is None:
        return "memory preflight: the free memory is unknown here; not checked"
    budget = int(free * HEADROOM)
    total = need.total + batch_bytes
    if total <= budget:
        return None
    smaller = max(granularity, (batch_size // 4) // granularity * granularity)
    fits = _largest_batch(batch_size, total, smaller, need_at(smaller), batch_bytes * smaller / batch_size, budget,
                          granularity)
    advice = (f"the largest global batch that fits is {fits} (--config.{flag}={fits}; computed from the step "
              f"compiled at batch {batch_size} and {smaller})" if fits
              else f"even batch {granularity} does not fit: lower --config.image_size (now {image_size}) or use a "
                   f"smaller model")
    raise MemoryPreflightError(
        f"the {name} step needs {total / GIB:.2f} GiB per device at global batch {batch_size} ({image_size}x"
        f"{image_size}; temporaries {need.temporaries / GIB:.2f} GiB, outputs {need.outputs / GIB:.2f} GiB, input "
        f"{batch_bytes / GIB:.2f} GiB) but {where} has {free / GIB:.2f} GiB free ({HEADROOM:.0%} usable): {advice}; "
        f"--config.memory_preflight=False runs it anyway")


def _largest_batch(batch: int, need: float, smaller: int, smaller_need: Optional[StepMemory], smaller_input: float,
                   budget: int, granularity: int) -> int:
    if smaller_need is None or smaller >= batch:
        return 0
    small = smaller_need.total + smaller_input
    per_example = max((need - small) / (batch - smaller), 1.0)
    fixed = need - per_example * batch
    fits = int((budget - fixed) // per_example) // granularity * granularity
    return max(min(fits, batch - granularity), 0)
