"""Training checkpoints (orbax CheckpointManager) and fine-tuning starts (`init_from`).

A step's checkpoint holds the whole `TrainState` (params, batch_stats, optimizer state, EMA, step, RNG); the
input position is the step itself, because the input pipeline can restart at any step exactly.  orbax writes
each step into a temporary folder and renames it when complete, so a kill mid-save leaves the previous
checkpoint as the latest.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from ..checkpoint import (CHECKPOINTS_DIR, STATE_ITEM, LoadedCheckpoint, error_cause, manager_options, open_checkpoint,
                          quiet_abandoned_io, ranking_metric)


def _best_metric(metrics: dict[str, float]) -> float:
    return ranking_metric(metrics)[1]


DAMAGED_DIR = "damaged_checkpoints"  # where resume moves a step that fails to restore (beside checkpoints/)
SPACE_MARGIN = 1.2  # a step's write needs the last step's size on disk plus this much for orbax's metadata


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (no space, permission, quota): the earlier ones are intact."""


class DamagedCheckpoint(RuntimeError):
    """A kept step that fails to restore (truncated or missing files)."""

    def __init__(self, step: int, path: Path, reason: str):
        super().__init__(f"step {step} ({path}) cannot be restored: {reason}")
        self.step, self.path, self.reason = step, path, reason


class TrainingCheckpoints:
    """Keeps the last `keep` checkpoints plus the one with the best task metric; saves asynchronously.

    A save that cannot be written raises `CheckpointWriteError` (at that save or, written in the background, at the
    next save or `wait`) after removing its temporary folder; a step that cannot be restored raises
    `DamagedCheckpoint`."""

    def __init__(self, workdir: Path, keep: int, async_save: bool = True):
        self.directory = Path(workdir).absolute() / CHECKPOINTS_DIR
        policy = preservation.AnyPreservationPolicy([
            preservation.LatestN(n=keep),
            preservation.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = manager_options(preservation_policy=policy, enable_async_checkpointing=async_save,
                                   cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._writing: Optional[int] = None  # the step whose write may still be in flight
        quiet_abandoned_io()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """The finished steps, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def best_step(self) -> Optional[int]:
        """The step with the best task metric among the kept checkpoints (None before the first eval)."""
        return self.manager.best_step()

    def best_metric(self) -> Optional[tuple[str, float]]:
        """(name, value) of the best step's metric."""
        step = self.manager.best_step()
        return None if step is None else ranking_metric(self.manager.metrics(step))

    def save(self, step: int, state: Any, metrics: Optional[dict[str, float]] = None) -> None:
        self.wait()  # the previous background write's failure surfaces here, naming its step
        self._check_space(step, state)
        self._writing = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
                              metrics=metrics, force=True)
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many types; name the step and cause
            raise self._write_failed(error) from error

    def wait(self) -> None:
        """Block until the background write is done; a failed one raises `CheckpointWriteError`."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001
            raise self._write_failed(error) from error
        self._writing = None

    def _check_space(self, step: int, state: Any) -> None:
        """Refuse a write that cannot fit the free space (the size of the last step on disk, else of the state),
        before orbax starts it: its failures mid-write are noisy and leave partial folders."""
        latest = self.manager.latest_step()
        need = (_folder_bytes(self.directory / str(latest)) if latest is not None else
                sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state)))
        free = shutil.disk_usage(self.directory).free
        if free < need * SPACE_MARGIN:
            raise CheckpointWriteError(self._write_message(step, f"{os.strerror(errno.ENOSPC)}: about "
                                                                 f"{need * SPACE_MARGIN / 1e6:.1f} MB needed, "
                                                                 f"{free / 1e6:.1f} MB free"))

    def _write_failed(self, error: BaseException) -> CheckpointWriteError:
        step, self._writing = self._writing, None
        for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        self.manager.reload()
        return CheckpointWriteError(self._write_message(step, error_cause(error)))

    def _write_message(self, step: Optional[int], cause: str) -> str:
        latest = self.manager.latest_step()
        good = (f"the last good checkpoint is step {latest} ({self.directory / str(latest)})" if latest is not None
                else "no checkpoint was written before")
        return (f"cannot write the checkpoint of step {step} to {self.directory}: {cause}; {good}. Free space (or fix "
                f"the folder's permissions or quota) and run the same command to resume from it")

    def restore(self, step: int, like: Any) -> Any:
        """Restore into the structure, dtypes and shardings of `like` (a state or its abstract twin)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardRestore(target)}))
        except Exception as error:  # noqa: BLE001 - truncated/missing files surface as many error types
            raise DamagedCheckpoint(step, self.directory / str(step), error_cause(error)) from error
        return restored[STATE_ITEM]

    def move_aside(self, step: int) -> Path:
        """Move a damaged step out of checkpoints/ (to damaged_checkpoints/STEP; never deleted) so that the
        manager's latest step is the newest good one."""
        target = self.directory.parent / DAMAGED_DIR / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)  # an older copy of the same damaged step
            shutil.move(str(self.directory / str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"moved aside step {step}")
        self.manager.reload()
        return target

    def close(self) -> None:
        """Finish (or, after a failure, abandon) the background write and release orbax's threads."""
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 - a failed background write was already reported by save/wait
            pass


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def read_pretrained(path: str) -> LoadedCheckpoint:
    """What `init_from` names: a converted checkpoint, a training workdir (its best step) or one of its step
    folders."""
    try:
        return open_checkpoint(path)
    except (FileNotFoundError, ValueError) as error:
        hint = ("; make it with `python convert_weights.py --model NAME --input FILE.pth --output "
                f"{path}` (the README's quickstarts say which weights), or start from random weights with "
                "--config.init_from=''") if not Path(path).expanduser().exists() else ""
        raise ValueError(f"init_from={path}: {error}{hint}") from error


def merge_pretrained(fresh: dict[str, Any], loaded: dict[str, Any], new_head: str = "classifier"
                     ) -> tuple[dict[str, Any], list[str]]:
    """Take every loaded tensor; only the classifier may differ in shape (a new head keeps its fresh init).

    Returns the merged variables and the names of the tensors that kept their fresh initialisation.
    """
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
    loaded_flat = traverse_util.flatten_dict(loaded, sep="/")
    missing = sorted(set(fresh_flat) - set(loaded_flat))
    mismatched = sorted(k for k in set(fresh_flat) & set(loaded_flat) if fresh_flat[k].shape != loaded_flat[k].shape)
    kept_fresh = [k for k in mismatched if f"/{new_head}/" in f"/{k}"]
    _require_fit(fresh_flat, loaded_flat, [f"missing {k}" for k in missing], kept_fresh,
                 "init_from does not fit this model")
    return _merged(fresh_flat, loaded_flat, kept_fresh), kept_fresh


def merge_backbone(fresh: dict[str, Any], classifier: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Load a classifier's feature layers (`features_N`; not its pooling head) into a dense model's backbone: the
    usual start of segmentation and detection training (an ImageNet backbone, fresh heads and extra layers).

    Every loaded layer up to the model's deepest must exist in `fresh` with the same shape (layers past it are
    left out: a backbone may end before the classifier's last layer).  Returns the merged variables and the top-level
    modules that kept their fresh initialisation (the heads, SSDLite's extra blocks).
    """
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
    deepest = max(_layer_index(k) for k in fresh_flat)  # a backbone may stop earlier (YOLO's MobileNetV2: 0..17)
    loaded_flat = {k: v for k, v in traverse_util.flatten_dict(classifier, sep="/").items()
                   if 0 <= _layer_index(k) <= deepest}
    _require_fit(fresh_flat, loaded_flat, [], [], "the classifier's layers do not fit this model's backbone (built "
                 "with other options, e.g. width_mult or reduced_tail?)")
    kept = set(fresh_flat) - set(loaded_flat)
    modules = sorted({k.split("/")[1] for k in kept}, key=_natural_order)
    return _merged(fresh_flat, loaded_flat, kept), modules


def _layer_index(key: str) -> int:
    """N of a `features_N` variable's path ('params/features_3/...'), else -1."""
    module = key.split("/")[1]
    return int(module[len("features_"):]) if module.startswith("features_") else -1


def _natural_order(name: str) -> tuple[str, int]:
    stem, _, index = name.rpartition("_")
    return (stem, int(index)) if index.isdigit() else (name, -1)


def _require_fit(fresh_flat: dict[str, Any], loaded_flat: dict[str, Any], problems: list[str], allowed: list[str],
                 message: str) -> None:
    unexpected = sorted(set(loaded_flat) - set(fresh_flat))
    mismatched = sorted(k for k in set(fresh_flat) & set(loaded_flat)
                        if fresh_flat[k].shape != loaded_flat[k].shape and k not in allowed)
    problems = [*problems, *(f"unexpected {k}" for k in unexpected),
                *(f"{k}: checkpoint {loaded_flat[k].shape} vs model {fresh_flat[k].shape}" for k in mismatched)]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise ValueError(f"{message}: {shown}")


def _merged(fresh_flat: dict[str, Any], loaded_flat: dict[str, Any], kept_fresh) -> dict[str, Any]:
    merged = {k: (fresh_flat[k] if k in kept_fresh else loaded_flat[k].astype(fresh_flat[k].dtype))
              for k in fresh_flat}
    return traverse_util.unflatten_dict(merged, sep="/")
