"""Where a run's state comes from: the workdir's latest checkpoint (resume; eval_only: its best step), else a fresh
start, from `init_from` when set (a converted or trained checkpoint of the same model, or a classifier whose layers
become the backbone of a dense model)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from ..checkpoint import METADATA_FILE
from ..registry import list_models, model_spec
from .checkpoints import DamagedCheckpoint, TrainingCheckpoints, merge_backbone, merge_pretrained, read_pretrained
from .experiment import ConfigError, model_options
from .reporting import log
from .steps import TrainState


def check_workdir_model(workdir: Path, config: ml_collections.ConfigDict, num_classes: int) -> None:
    """A workdir holding another model's run is named before orbax fails to restore it into this one."""
    path = workdir / METADATA_FILE
    if not path.exists():
        return
    stored = json.loads(path.read_text())
    options = {k: v for k, v in model_options(config).items() if k != "dropout"}
    ours = (config.model.name, num_classes, json.loads(json.dumps(options)))  # as model.json holds them
    theirs = (stored.get("model"), stored.get("num_classes"), stored.get("overrides", {}))
    if theirs != ours and (workdir / "checkpoints").exists():
        raise ConfigError(f"workdir {workdir} holds a run of {theirs[0]} ({theirs[1]} classes, options "
                          f"{theirs[2]}), not of this config's {ours[0]} ({ours[1]} classes, options {ours[2]}): "
                          f"pass another --workdir, or the config that run used ({workdir / 'config.json'})")


def initial_state(config: ml_collections.ConfigDict, checkpoints: TrainingCheckpoints, fresh: TrainState,
                  init_optimizer: Callable[[Any], Any], use_ema: bool, replicated: Any,
                  num_classes: int) -> tuple[TrainState, int]:
    """(state, its step): resumed from the workdir's latest checkpoint (eval_only: its best), else `fresh`, loaded
    from `init_from` if set."""
    while checkpoints.latest_step() is not None:
        best = checkpoints.best_step() if config.eval_only else None
        step = checkpoints.latest_step() if best is None else best
        log(f"{'evaluating' if config.eval_only else 'resuming from'} {checkpoints.directory / str(step)}"
            + (" (the best step)" if best is not None else ""))
        try:
            return checkpoints.restore(step, fresh), step
        except DamagedCheckpoint as damaged:
            moved = checkpoints.move_aside(step)
            left = checkpoints.steps()
            log(f"warning: {damaged}; moved it to {moved}; "
                + (f"falling back to step {left[0]}" if left else "no other checkpoint is kept: starting afresh"))
    if config.init_from:
        return _load_pretrained(config, fresh, init_optimizer, use_ema, replicated, num_classes), 0
    return fresh, 0


def _load_pretrained(config: ml_collections.ConfigDict, state: TrainState, init_optimizer: Callable[[Any], Any],
                     use_ema: bool, replicated: Any, num_classes: int) -> TrainState:
    try:
        pretrained = read_pretrained(config.init_from)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    expected, stored = config.model.name, pretrained.metadata.get("model")
    backbone_only = (stored not in (None, expected) and stored in list_models()
                     and model_spec(stored).task == "classification" and model_spec(expected).task != "classification")
    if stored not in (None, expected) and not backbone_only:
        raise ConfigError(f"init_from={config.init_from} holds a {stored} checkpoint, but config.model.name is "
                          f"{expected}: set --config.model.name={stored}")
    log(f"init_from: {pretrained.description}")
    fresh = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    try:
        if backbone_only:
            merged, fresh_modules = merge_backbone(fresh, pretrained.variables)
            log(f"init_from: {stored}'s layers as the backbone of {expected}; fresh: {', '.join(fresh_modules)}")
        else:
            merged, kept_fresh = merge_pretrained(fresh, pretrained.variables)
            if kept_fresh:
                log(f"init_from: new head for {num_classes} classes ({', '.join(kept_fresh)})")
    except ValueError as error:
        raise ConfigError(f"init_from={config.init_from} ({stored or 'unknown model'}): {error}") from error
    merged = jax.device_put(merged, replicated)
    tx_state = jax.jit(init_optimizer, out_shardings=replicated)(merged["params"])
    # the EMA starts as a copy: the train step donates the state, and one buffer cannot be donated twice
    ema = jax.tree.map(jnp.copy, (merged["params"], merged["batch_stats"])) if use_ema else (None, None)
    return state.replace(params=merged["params"], batch_stats=merged["batch_stats"], opt_state=tx_state,
                         ema_params=ema[0], ema_batch_stats=ema[1])
