"""Save and load converted variables as orbax checkpoints, with a small JSON description."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

VARIABLES_DIR = "variables"
METADATA_FILE = "model.json"


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


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
    """Read variables written by `save_variables` / convert_weights.py (DIR or DIR/variables)."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if (path / VARIABLES_DIR).is_dir():
        path = path / VARIABLES_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}: expected a folder written by convert_weights.py")
    if (path / "checkpoints").is_dir() or (path / "state").is_dir():  # a workdir, or one of its step folders
        raise ValueError(f"{path} is a training run (train.py's workdir or one of its steps), not a converted "
                         "checkpoint: predict.py and export.py do not read training runs yet; fine-tune or "
                         "evaluate it with train.py --config.init_from=WORKDIR (it takes the best step)")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(path)
    except Exception as error:  # noqa: BLE001 - orbax raises many types; say which folder failed
        raise ValueError(f"cannot read the orbax checkpoint at {path}: {error}") from error
    return _tree_map(np.asarray, restored)


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The model description convert_weights.py stored beside the variables ({} if none)."""
    file = Path(path) / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _tree_map(fn, tree):
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)
