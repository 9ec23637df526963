"""Save and load model variables: converted checkpoints (convert_weights.py) and training runs (train.py).

Three kinds of folder hold a model, and every reader here takes all three:
- a converted checkpoint: DIR/variables (orbax) + DIR/model.json;
- a training workdir: WORKDIR/checkpoints/STEP/state (orbax, the whole TrainState) + WORKDIR/model.json; its
  best step (by the run's eval metric) is used unless a step is asked for;
- one step folder of a training run: WORKDIR/checkpoints/STEP.
model.json names the model and, for a training run, its image size, eval preprocessing and class names.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .weights import WeightsInfo

VARIABLES_DIR = "variables"
METADATA_FILE = "model.json"
CHECKPOINTS_DIR = "checkpoints"  # a training workdir's steps
STATE_ITEM = "state"  # the orbax item of a training step that holds the TrainState


def ranking_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """A saved training step's metrics hold one entry, the run's task's best metric (eval_top1, eval_miou,
    eval_map): its (name, value), higher is better."""
    ((name, value),) = metrics.items()
    return name, float(value)


def error_cause(error: BaseException) -> str:
    """The operating system's words for a write/read failure buried in orbax/tensorstore's message (its
    os_error_code), else the first line of the innermost error."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 16:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for link in chain:
        if isinstance(link, OSError) and link.errno:
            return f"{os.strerror(link.errno)} (errno {link.errno})"
        code = re.search(r"os_error_code='?(\d+)", str(link))
        if code:
            return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    lines = str(chain[-1]).strip().splitlines()
    if not lines:
        return type(chain[-1]).__name__
    first = re.sub(r"\s*\[tensorstore_spec=.*$", "", lines[0])  # the JSON spec of the store read or written
    clauses = [part for part in first.split(": ") if part.strip()]  # tensorstore nests "STATUS: what: why: ..."
    return f"{clauses[0]}: {clauses[-1]}" if len(clauses) > 2 else first[:300]


class _OrbaxErrorsOnce(logging.Filter):
    """orbax logs each failed background write at ERROR with its traceback, and asyncio each of its abandoned write
    tasks; the failure is raised once, with its cause, by the code that waits for it: drop those copies (and
    orbax's warning, at every save without an eval, that a metric is tracked)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return not ("orbax" in record.pathname or "orbax" in record.getMessage())
        return "tracked_metric" not in record.getMessage()


_ORBAX_ERRORS_ONCE = _OrbaxErrorsOnce()  # installed for the process's life: abandoned tasks are logged at exit


def quiet_abandoned_io() -> None:
    """After a failed write or read orbax closes its event loop while tensorstore still completes the other futures;
    each completion then reports 'Event loop is closed' as an unraisable error (hundreds per failure). Drop those
    (the failure itself is raised once, by our callers); every other unraisable error is reported as
    before. Process-wide and idempotent."""
    logging.getLogger("absl").addFilter(_ORBAX_ERRORS_ONCE)
    logging.getLogger("asyncio").addFilter(_ORBAX_ERRORS_ONCE)
    previous = sys.unraisablehook
    if getattr(previous, "quiets_abandoned_writes", False):
        return

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    hook.quiets_abandoned_writes = True
    sys.unraisablehook = hook


def save_variables(directory: str | os.PathLike, variables: dict[str, Any],
                   metadata: Optional[dict[str, Any]] = None, overwrite: bool = False) -> Path:
    """Write `variables` under DIR/variables (orbax) and `metadata` to DIR/model.json.

    orbax writes into a temporary folder and renames it when complete, so an interrupted
    save never leaves a checkpoint that looks whole.
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    target = directory / VARIABLES_DIR
    if target.exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a checkpoint; choose another output or overwrite it")
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _tree_map(np.asarray, variables)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, arrays, force=overwrite)
        checkpointer.wait_until_finished()
    if metadata is not None:
        tmp = directory / (METADATA_FILE + ".tmp")
        tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / METADATA_FILE)
    return directory


@dataclasses.dataclass(frozen=True)
class LoadedCheckpoint:
    variables: dict[str, Any]  # {'params', 'batch_stats'}
    metadata: dict[str, Any]  # model.json: model, num_classes, overrides (+ image_size, preprocessing, class_names)
    description: str  # where the variables came from, for messages ('runs/digits step 400 (best eval_top1 0.99)')


def manager_options(**options: Any):
    """orbax options of a training run's CheckpointManager: `best_fn` ranks steps by their `ranking_metric`
    (without it orbax answers best_step() with the latest step)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManagerOptions(best_fn=lambda metrics: ranking_metric(metrics)[1], best_mode="max", **options)


def _run_folders(path: Path) -> tuple[Optional[Path], Optional[int]]:
    """(workdir, step) when `path` is a training workdir (step None) or one of its step folders."""
    if (path / CHECKPOINTS_DIR).is_dir():
        return path, None
    if (path / STATE_ITEM).is_dir() and path.parent.name == CHECKPOINTS_DIR and path.name.isdigit():
        return path.parent.parent, int(path.name)
    return None, None


def require_checkpoint_folder(path: str | os.PathLike) -> None:
    """FileNotFoundError, saying what is expected, unless `path` is a folder (a PyTorch file is named as such)."""
    given = Path(path).expanduser()
    expected = "a folder written by convert_weights.py or train.py (its --workdir, or one of its checkpoints/STEP folders)"
    if given.is_file():
        hint = (" (PyTorch weights: convert them first, python convert_weights.py --model NAME --input FILE "
                "--output FOLDER)" if given.suffix in (".pth", ".pt", ".bin", ".safetensors") else "")
        raise FileNotFoundError(f"{given} is a file, not a checkpoint: expected {expected}{hint}")
    if not given.is_dir():
        raise FileNotFoundError(f"no checkpoint at {given}: expected {expected}")


def open_checkpoint(path: str | os.PathLike, step: Optional[int] = None) -> LoadedCheckpoint:
    """Variables and model description from a converted checkpoint, a training workdir (its best step, or
    `step`) or a training run's step folder."""
    import orbax.checkpoint as ocp

    given = Path(path).expanduser()
    path = given.absolute()
    if path.name == VARIABLES_DIR and (path.parent / METADATA_FILE).is_file():
        path = path.parent
    require_checkpoint_folder(given)
    workdir, step_of_folder = _run_folders(path)
    if workdir is None:
        if step is not None:
            raise ValueError(f"a step ({step}) was asked for, but {given} is a converted checkpoint, not a training run")
        if not (path / VARIABLES_DIR).is_dir():
            raise FileNotFoundError(f"{given} holds no checkpoint: expected {VARIABLES_DIR}/ (convert_weights.py) "
                                    f"or {CHECKPOINTS_DIR}/ (a train.py workdir)")
        variables = _restore(ocp.StandardCheckpointer, path / VARIABLES_DIR)
        return LoadedCheckpoint(variables, load_metadata(path), str(given))
    if step is not None and step_of_folder is not None and step != step_of_folder:
        raise ValueError(f"{given} is step {step_of_folder} of a training run, but step {step} was asked for")
    step = step if step is not None else step_of_folder
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that a read-only manager's folder is read-only
    try:
        manager = ocp.CheckpointManager(workdir / CHECKPOINTS_DIR, options=manager_options(
            read_only=True, save_interval_steps=0, create=False))  # what read_only implies; orbax warns unless given
    finally:
        absl_logger.setLevel(level)
    try:
        kept = list(manager.all_steps())
        if not kept:
            raise ValueError(f"the training run {workdir} holds no finished checkpoint yet")
        if step is None:
            best = manager.best_step()
            chosen = best if best is not None else manager.latest_step()
            metric = manager.metrics(chosen) if best is not None else None
            how = ("best {} {:.4f}".format(*ranking_metric(metric)) if metric else "latest; no evaluated step")
        elif step not in kept:
            raise ValueError(f"step {step} is not kept in {workdir / CHECKPOINTS_DIR}; kept steps: "
                             f"{', '.join(map(str, sorted(kept)))}")
        else:
            chosen, how = step, "as asked"
        state = _restore_step(manager, workdir, chosen, kept)
    finally:
        manager.close()
    state = state[STATE_ITEM]
    variables = _tree_map(np.asarray, {"params": state["params"], "batch_stats": state["batch_stats"]})
    return LoadedCheckpoint(variables, load_metadata(workdir), f"{workdir} step {chosen} ({how})")


def _restore_step(manager: Any, workdir: Path, step: int, kept: list[int]) -> dict[str, Any]:
    """The state of a kept step; a step that fails to restore is named, with the kept steps that do restore."""
    import orbax.checkpoint as ocp

    def restore(number: int) -> dict[str, Any]:
        return manager.restore(number, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore()}))

    quiet_abandoned_io()
    try:
        return restore(step)
    except Exception as error:  # noqa: BLE001 - truncated/missing files surface as many error types
        cause = error_cause(error)
    good = []
    for other in sorted(set(kept) - {step}, reverse=True):
        try:
            restore(other)
            good.append(other)
        except Exception:  # noqa: BLE001 - damaged as well
            pass
    others = (f"the good steps are {', '.join(map(str, good))}: pass one with --step (predict.py, export.py) or use "
              f"its folder {workdir / CHECKPOINTS_DIR}/STEP" if good else "no other kept step restores either")
    raise ValueError(f"step {step} of the training run {workdir} is damaged ({cause}); {others}")


def load_variables(path: str | os.PathLike, step: Optional[int] = None) -> dict[str, Any]:
    """Variables {'params', 'batch_stats'} of a converted checkpoint or a training run (see `open_checkpoint`)."""
    return open_checkpoint(path, step).variables


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The model description (model.json) of a checkpoint or training run ({} if none)."""
    path = Path(path).expanduser().absolute()
    workdir, _ = _run_folders(path)
    file = (workdir or path) / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def eval_transform(metadata: dict[str, Any]) -> WeightsInfo:
    """The preprocessing a checkpoint's model was evaluated with: a training run's own (its image size and
    mean/std), else the reference weights' of its model."""
    if "preprocessing" in metadata:
        return WeightsInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in metadata["preprocessing"].items()})
    from .registry import weights_info

    return weights_info(metadata["model"])


def class_names(metadata: dict[str, Any]) -> Optional[list[str]]:
    """A training run's class names; else those of the reference weights' label set when the class count is
    theirs (ImageNet's 1000, VOC's 21 for segmentation, COCO's 91 for SSD, 80 for YOLO); else None."""
    if metadata.get("class_names"):
        return list(metadata["class_names"])
    from .weights import LABEL_SETS

    label_set = eval_transform(metadata).labels if "model" in metadata or "preprocessing" in metadata else "imagenet1k"
    if label_set in LABEL_SETS:
        names = LABEL_SETS[label_set]
        return list(names) if metadata.get("num_classes", len(names)) == len(names) else None
    if metadata.get("num_classes", 1000) == 1000:
        from .preprocessing import imagenet_labels

        return imagenet_labels()
    return None


def _restore(checkpointer_class, path: Path) -> dict[str, Any]:
    try:
        with checkpointer_class() as checkpointer:
            restored = checkpointer.restore(path)
    except Exception as error:  # noqa: BLE001 - orbax raises many types; say which folder failed
        raise ValueError(f"cannot read the orbax checkpoint at {path}: {error}") from error
    return _tree_map(np.asarray, restored)


def _tree_map(fn, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)
