"""What a run writes and prints besides checkpoints: metrics as JSON lines, TensorBoard scalars, the progress bar,
and the signals that stop it cleanly (SIGTERM from a preemption, Ctrl-C)."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"
STOP_SIGNALS = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("Ctrl-C (SIGINT)", 130)}  # name, 128 + number


def is_main_process() -> bool:
    return jax.process_index() == 0


def log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


class Stopped(SystemExit):
    """The run saved its state and stops early; rerunning the same command resumes it."""

    def __init__(self, code: int):
        super().__init__(code)


class StopWatch:
    """Turns SIGTERM (TPU preemption, `kill`) and a first Ctrl-C into a save-and-exit at the next step boundary;
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if signum == signal.SIGINT:
            print("\nCtrl-C: saving at the end of this step (press Ctrl-C again to abort without saving)", flush=True)

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.received is not None
        return bool(np.any(multihost_utils.process_allgather(np.array(self.received is not None))))

    def describe(self) -> tuple[str, int]:
        """(the signal's name, the exit code) of what stopped the run."""
        return STOP_SIGNALS.get(self.received, STOP_SIGNALS[signal.SIGTERM])  # other hosts: a peer's SIGTERM

    def restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class JsonLines:
    """Append-only JSON lines written by the main process; resuming drops lines past the restored step."""

    def __init__(self, path: Path, resume_step: float):
        self.path = path
        if is_main_process() and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if is_main_process():
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Scalars:
    """TensorBoard summaries of the main process."""

    def __init__(self, directory: Path):
        self.writer = None
        if is_main_process():
            from flax.metrics.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(directory))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.scalar(name, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


def progress_bar(enabled: bool, total: int, initial: int):
    if not is_main_process() or not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")
