"""Training checkpoints (orbax CheckpointManager) and fine-tuning starts (`init_from`).

A step's checkpoint holds the whole `TrainState` (params, batch_stats, optimizer state, EMA, step, RNG); the
input position is the step itself, because the input pipeline can restart at any step exactly.  orbax writes
each step into a temporary folder and renames it when complete, so a kill mid-save leaves the previous
checkpoint as the latest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from ..checkpoint import (CHECKPOINTS_DIR, STATE_ITEM, LoadedCheckpoint, manager_options, open_checkpoint,
                          ranking_metric)


def _best_metric(metrics: dict[str, float]) -> float:
    return ranking_metric(metrics)[1]


class TrainingCheckpoints:
    """Keeps the last `keep` checkpoints plus the one with the best task metric; saves asynchronously."""

    def __init__(self, workdir: Path, keep: int, async_save: bool = True):
        self.directory = Path(workdir).absolute() / CHECKPOINTS_DIR
        policy = preservation.AnyPreservationPolicy([
            preservation.LatestN(n=keep),
            preservation.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = manager_options(preservation_policy=policy, enable_async_checkpointing=async_save,
                                   cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The step with the best task metric among the kept checkpoints (None before the first eval)."""
        return self.manager.best_step()

    def best_metric(self) -> Optional[tuple[str, float]]:
        """(name, value) of the best step's metric."""
        step = self.manager.best_step()
        return None if step is None else ranking_metric(self.manager.metrics(step))

    def save(self, step: int, state: Any, metrics: Optional[dict[str, float]] = None) -> None:
        self.manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}), metrics=metrics,
                          force=True)

    def restore(self, step: int, like: Any) -> Any:
        """Restore into the structure, dtypes and shardings of `like` (a state or its abstract twin)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(target)}))
        return restored[STATE_ITEM]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


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
