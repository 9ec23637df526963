"""What the benchmarks print about the CPU they ran on."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> tuple[str, float]:
    """CPU model and nominal fp32 peak GFLOP/s (cores x clock x FMA lanes x 2 FMA units x 2)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor())
    mhz = next((float(l.split(":", 1)[1]) for l in info.splitlines() if l.startswith("cpu MHz")), 0.0)
    flags = next((l for l in info.splitlines() if l.startswith("flags")), "")
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = os.cpu_count() or 1
    return f"{model}, {cores} cores, {mhz:.0f} MHz, {'AVX-512' if lanes == 16 else 'AVX2' if lanes == 8 else 'SSE'}", \
        cores * mhz / 1e3 * lanes * 2 * 2
