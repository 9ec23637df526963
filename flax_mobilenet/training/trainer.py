"""The training loop: data-parallel jit over a device mesh, evaluation, checkpoints, resume, logging."""
from __future__ import annotations

import collections
import functools
import json
import itertools
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from ..registry import create_model, list_models, model_spec
from . import input_pipeline, optim, steps, tasks
from .checkpoints import TrainingCheckpoints, merge_backbone, merge_pretrained, read_pretrained

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the job did not finish; rerunning the same command resumes it
METRICS_FILE = "metrics.jsonl"
TRAIN_METRICS_FILE = "train_metrics.jsonl"


class ConfigError(ValueError):
    """A config value that cannot work, named with the fix."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the checkpoints written before stay the latest."""


class Preempted(SystemExit):
    def __init__(self):
        super().__init__(PREEMPTED_EXIT_CODE)


def is_main_process() -> bool:
    return jax.process_index() == 0


def check_workdir(workdir: str) -> Path:
    """Create the workdir and prove it is writable now, not after an hour of training."""
    path = Path(workdir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"cannot write to workdir {path}: {error.strerror or error}") from error
    return path


def validate_config(config: ml_collections.ConfigDict, info: input_pipeline.DatasetInfo) -> None:
    if config.model.name not in list_models():
        raise ConfigError(f"unknown model {config.model.name!r}; known: {', '.join(list_models())}")
    task = model_spec(config.model.name).task
    if task not in info.tasks:
        raise ConfigError(f"{config.model.name} is a {task} model, but dataset {info.name!r} is for "
                          f"{' and '.join(info.tasks)}: {input_pipeline.datasets_for(task)}")
    options = {k: v for k, v in config.model.items() if k not in ("name", "num_classes")}
    try:
        model_spec(config.model.name, **options)
        if task == "detection":  # a head whose loss is not built yet says so here, before any work
            create_model(config.model.name, **options).loss_fn((64, 64))
    except (TypeError, ValueError, NotImplementedError) as error:
        raise ConfigError(f"config.model: {error}") from None
    num_classes = config.model.get("num_classes")
    if num_classes not in (None, -1, info.num_classes):
        raise ConfigError(f"dataset {info.name!r} has {info.num_classes} classes but config.model.num_classes="
                          f"{num_classes}; set it to {info.num_classes} (or -1 to take it from the dataset)")
    devices, processes = jax.device_count(), jax.process_count()
    for key in ("batch_size", "eval_batch_size"):
        value = config.get(key) or config.batch_size
        if value <= 0 or value % devices:
            raise ConfigError(f"config.{key}={value} must be a positive multiple of the {devices} devices "
                              f"({processes} process(es)); e.g. {max(devices, value // devices * devices)}")
    if not config.eval_only and info.num_train < config.batch_size:
        raise ConfigError(f"config.batch_size={config.batch_size} exceeds the {info.num_train} training examples "
                          f"of {info.name!r}")
    for key in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
        if config.get(key, 1) <= 0:
            raise ConfigError(f"config.{key} must be positive, got {config.get(key)}")


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    options = {k: v for k, v in config.model.items() if k not in ("name", "num_classes")}
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    return create_model(config.model.name, num_classes=num_classes, dtype=dtype, **options)


def _device_batches(batches: Iterator[dict[str, np.ndarray]], sharding: NamedSharding,
                    depth: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Assemble each process's rows into global arrays, keeping `depth` batches in flight to the devices."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append({k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()})
        if len(queue) > depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class _PreemptionWatch:
    """Turns SIGTERM (TPU preemption, `kill`) into a save-and-exit at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class _JsonLines:
    """Append-only JSON lines written by the main process; resuming drops lines past the restored step."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if is_main_process() and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if is_main_process():
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class Trainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = check_workdir(workdir)
        self.info = input_pipeline.dataset_info(config)
        validate_config(config, self.info)
        self.log(f"{config.model.name} on {self.info.name} ({self.info.num_train} train / {self.info.num_eval} eval "
                 f"examples): {data_parallel_environment()}")
        self.model = build_model(config, self.info.num_classes)
        self.task = tasks.create_task(model_spec(config.model.name).task, self.model, self.info.num_classes,
                                      config.image_size, config.get("label_smoothing", 0.0))
        self.mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.data_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.steps_per_epoch = self.info.num_train // config.batch_size
        self.num_steps = (config.num_train_steps if config.num_train_steps > 0
                          else config.num_epochs * self.steps_per_epoch)
        self.schedule = optim.learning_rate_schedule(config, self.steps_per_epoch)
        self.use_ema = bool(config.get("ema_decay", 0.0))

        param_shapes = jax.eval_shape(self.model.init, jax.random.key(0),
                                      jnp.zeros((1, config.image_size, config.image_size, 3)))["params"]
        try:
            frozen = optim.frozen_modules(param_shapes, config.get("frozen_layers", 0))
        except ValueError as error:
            raise ConfigError(f"config.{error}") from error
        if frozen:
            self.log(f"frozen_layers={len(frozen)}: features_0..features_{len(frozen) - 1} keep their weights")
        self.tx = optim.create_optimizer(config, self.schedule, param_shapes)
        self._init = jax.jit(functools.partial(steps.create_train_state, self.model, self.tx,
                                               image_size=config.image_size, use_ema=self.use_ema),
                             out_shardings=self.replicated)
        self._train_step = jax.jit(
            functools.partial(steps.train_step, model=self.model, task=self.task, tx=self.tx, schedule=self.schedule,
                              ema_decay=config.get("ema_decay", 0.0), frozen=frozen),
            in_shardings=(self.replicated, self.data_sharding), out_shardings=(self.replicated, self.replicated),
            donate_argnums=0)
        self._eval_step = jax.jit(functools.partial(steps.eval_step, model=self.model, task=self.task),
                                  in_shardings=(self.replicated, self.replicated, self.data_sharding),
                                  out_shardings=self.replicated)
        self.checkpoints = TrainingCheckpoints(self.workdir, keep=config.get("keep_checkpoints", 3),
                                               async_save=config.get("async_checkpointing", True))

    # ----------------------------------------------------------------------------------------------- state
    def initial_state(self) -> tuple[steps.TrainState, int]:
        """Resume from the workdir's latest checkpoint (eval_only: its best), else start fresh (from `init_from`
        if set)."""
        state = self._init(jax.random.key(self.config.seed))
        latest = self.checkpoints.latest_step()
        if latest is not None:
            best = self.checkpoints.best_step() if self.config.eval_only else None
            step = latest if best is None else best
            self.log(f"{'evaluating' if self.config.eval_only else 'resuming from'} "
                     f"{self.checkpoints.directory / str(step)}" + (" (the best step)" if best is not None else ""))
            return self.checkpoints.restore(step, state), step
        if self.config.get("init_from"):
            state = self._load_pretrained(state)
        return state, 0

    def _load_pretrained(self, state: steps.TrainState) -> steps.TrainState:
        try:
            pretrained = read_pretrained(self.config.init_from)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        expected, stored = self.config.model.name, pretrained.metadata.get("model")
        backbone_only = (stored not in (None, expected) and stored in list_models()
                         and model_spec(stored).task == "classification"
                         and model_spec(expected).task != "classification")
        if stored not in (None, expected) and not backbone_only:
            raise ConfigError(f"init_from={self.config.init_from} holds a {stored} checkpoint, but "
                              f"config.model.name is {expected}: set --config.model.name={stored}")
        self.log(f"init_from: {pretrained.description}")
        fresh = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        try:
            if backbone_only:
                merged, fresh_modules = merge_backbone(fresh, pretrained.variables)
                self.log(f"init_from: {stored}'s layers as the backbone of {expected}; fresh: "
                         f"{', '.join(fresh_modules)}")
            else:
                merged, kept_fresh = merge_pretrained(fresh, pretrained.variables)
                if kept_fresh:
                    self.log(f"init_from: new head for {self.info.num_classes} classes ({', '.join(kept_fresh)})")
        except ValueError as error:
            raise ConfigError(f"init_from={self.config.init_from} ({stored or 'unknown model'}): {error}") from error
        merged = jax.device_put(merged, self.replicated)
        tx_state = jax.jit(self.tx.init, out_shardings=self.replicated)(merged["params"])
        ema = (merged["params"], merged["batch_stats"]) if self.use_ema else (None, None)
        return state.replace(params=merged["params"], batch_stats=merged["batch_stats"], opt_state=tx_state,
                             ema_params=ema[0], ema_batch_stats=ema[1])

    # ------------------------------------------------------------------------------------------------ eval
    def evaluate(self, state: steps.TrainState) -> dict[str, float]:
        batches = input_pipeline.eval_batches(
            self.config, global_batch_size=self.config.get("eval_batch_size") or self.config.batch_size,
            process_index=jax.process_index(), process_count=jax.process_count())
        weights = [("eval", state.params, state.batch_stats)]
        if self.use_ema:
            weights.append(("eval_ema", state.ema_params, state.ema_batch_stats))
        evaluations = {prefix: self.task.evaluation() for prefix, _, _ in weights}
        for batch in _device_batches(batches, self.data_sharding):
            for prefix, params, batch_stats in weights:
                evaluations[prefix].add(self._eval_step(params, batch_stats, batch), batch)
        results: dict[str, Any] = {}
        for prefix, evaluation in evaluations.items():
            results.update({f"{prefix}_{k}": float(v) for k, v in evaluation.result(self.info.num_eval).items()})
        results["eval_examples"] = self.info.num_eval
        return results

    # ----------------------------------------------------------------------------------------------- train
    @staticmethod
    def log(message: str) -> None:
        if is_main_process():
            print(message, flush=True)

    def train(self) -> dict[str, Any]:
        config, started = self.config, time.time()
        state, start_step = self.initial_state()
        if config.eval_only:
            return self._eval_only(state, start_step)
        metrics_log = _JsonLines(self.workdir / METRICS_FILE, start_step)
        train_log = _JsonLines(self.workdir / TRAIN_METRICS_FILE, start_step)
        writer = self._summary_writer()
        if is_main_process():
            (self.workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
            self._write_model_metadata()
        batches = _device_batches(input_pipeline.train_batches(
            config, global_batch_size=config.batch_size, process_index=jax.process_index(),
            process_count=jax.process_count(), start_step=start_step), self.data_sharding)
        train_step = self._train_step
        if start_step < self.num_steps:
            first = next(batches)
            train_step = self._compile_train_step(state, first)
            batches = itertools.chain([first], batches)
        watch = _PreemptionWatch()
        progress = self._progress_bar(start_step)
        pending: list[dict[str, jax.Array]] = []
        last_eval: dict[str, Any] = {}
        last_log_time, last_log_step = time.time(), start_step
        try:
            for step in range(start_step + 1, self.num_steps + 1):
                state, metrics = train_step(state, next(batches))
                pending.append(metrics)
                final = step == self.num_steps
                do_eval = final or step % config.eval_every_steps == 0
                do_save = do_eval or step % config.checkpoint_every_steps == 0
                if do_save or step % config.get("log_every_steps", 50) == 0:
                    now = time.time()
                    summary = self._summarize(pending, step)
                    summary["images_per_second"] = (step - last_log_step) * config.batch_size / (now - last_log_time)
                    last_log_time, last_log_step, pending = now, step, []
                    train_log.write({"step": step, **summary})
                    self._write_scalars(writer, step, {f"train_{k}": v for k, v in summary.items()})
                    if progress is not None:
                        progress.set_postfix(loss=f"{summary['loss']:.4f}", lr=f"{summary['learning_rate']:.3g}",
                                             img_s=f"{summary['images_per_second']:.0f}", refresh=False)
                if do_eval:
                    last_eval = {"step": step, **self.evaluate(state)}
                    metrics_log.write(last_eval)
                    self._write_scalars(writer, step, {k: v for k, v in last_eval.items() if k != "step"})
                    self.log(f"\nstep {step}: eval {self.task.describe(last_eval)}")
                if do_save:
                    best = self.task.best_metric
                    self.checkpoints.save(step, state, {best: last_eval[best]} if do_eval else None)
                if progress is not None:
                    progress.update(1)
                at_sync_point = jax.process_count() == 1 or step % config.get("log_every_steps", 50) == 0
                if not final and at_sync_point and watch.should_stop():
                    if not do_save:
                        if pending:  # never save a diverged state: _summarize raises on NaN/inf
                            self._summarize(pending, step)
                        self.checkpoints.save(step, state)
                    self.checkpoints.wait()
                    self.log(f"\nSIGTERM: saved step {step} to {self.checkpoints.directory}; run the same command "
                             f"to resume")
                    raise Preempted()
        finally:
            watch.restore()
            if progress is not None:
                progress.close()
            self.checkpoints.wait()
            if writer is not None:
                writer.flush()
        if not last_eval:  # already trained to the end in an earlier run
            last_eval = {"step": self.num_steps, **self.evaluate(state)}
        self._print_summary(last_eval, time.time() - started)
        return last_eval

    def _compile_train_step(self, state: steps.TrainState, batch: dict[str, jax.Array]):
        """Compile ahead of the first step, saying so: it takes seconds to minutes, during which nothing moves."""
        config = self.config
        self.log(f"compiling the train step ({config.model.name}, global batch {config.batch_size}, "
                 f"{config.image_size}x{config.image_size}) ...")
        started = time.time()
        compiled = self._train_step.lower(state, batch).compile()
        self.log(f"compiled in {time.time() - started:.1f} s")
        return compiled

    def _eval_only(self, state: steps.TrainState, step: int) -> dict[str, Any]:
        if step == 0 and not self.config.get("init_from"):
            raise ConfigError(f"eval_only: {self.workdir} holds no checkpoint and config.init_from is not set")
        results = {"step": step, **self.evaluate(state)}
        _JsonLines(self.workdir / METRICS_FILE, resume_step=math.inf).write(results)
        self.log(f"eval_only on {self.info.name}/{self.info.eval_split} ({results['eval_examples']} examples): "
                 f"{self.task.describe(results)}")
        return results

    def _summarize(self, pending: list[dict[str, jax.Array]], step: int) -> dict[str, float]:
        """Fetch the metrics of the steps since the last log (one host sync) and stop on a NaN/inf loss."""
        fetched = jax.device_get(pending)
        if any(int(m["nonfinite"]) for m in fetched):
            bad = next(step - len(fetched) + 1 + i for i, m in enumerate(fetched) if int(m["nonfinite"]))
            latest = self.checkpoints.latest_step()
            where = (f"the last good checkpoint is step {latest} in {self.checkpoints.directory}" if latest
                     else "no checkpoint was written")
            raise TrainingDiverged(f"training diverged (NaN/inf loss, gradient or weights) at step {bad} (lr "
                                   f"{float(fetched[-1]['learning_rate']):.3g}); stopped without saving: {where}. "
                                   f"Lower config.learning_rate or set config.grad_clip_norm.")
        summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]
                   if k not in ("learning_rate", "nonfinite")}
        summary["learning_rate"] = float(fetched[-1]["learning_rate"])
        return summary

    # ------------------------------------------------------------------------------------------- reporting
    def _progress_bar(self, start_step: int):
        if not is_main_process() or not self.config.get("progress_bar", True):
            return None
        from tqdm import tqdm
        return tqdm(total=self.num_steps, initial=start_step, unit="step", dynamic_ncols=True, desc="train")

    def _summary_writer(self):
        if not is_main_process():
            return None
        from flax.metrics.tensorboard import SummaryWriter
        return SummaryWriter(str(self.workdir / "tensorboard"))

    @staticmethod
    def _write_scalars(writer, step: int, scalars: dict[str, float]) -> None:
        if writer is not None:
            for name, value in scalars.items():
                writer.scalar(name, value, step)

    def _write_model_metadata(self) -> None:
        """model.json beside the checkpoints, so predict.py / init_from know which model they hold."""
        from ..checkpoint import METADATA_FILE
        options = {k: v for k, v in self.config.model.items() if k not in ("name", "num_classes", "dropout")}
        metadata = {"model": self.config.model.name, "num_classes": self.info.num_classes, "overrides": options,
                    "dataset": self.info.name, "image_size": self.config.image_size,
                    "preprocessing": input_pipeline.eval_transform(self.config).to_json(),
                    "class_names": list(self.info.class_names)}
        (self.workdir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")

    def _print_summary(self, last_eval: dict[str, Any], seconds: float) -> None:
        best, best_metric = self.checkpoints.best_step(), self.checkpoints.best_metric()
        best_text = ("no evaluated checkpoint" if best is None
                     else f"best: step {best}, {best_metric[0]} {best_metric[1]:.4f}")
        self.log(f"done: {self.config.model.name} on {self.info.name}, step {last_eval['step']}: "
                 f"eval {self.task.describe(last_eval)} ({last_eval['eval_examples']} examples) in {seconds:.0f} s\n"
                 f"checkpoints: {self.checkpoints.directory} ({best_text})\n"
                 f"metrics: {self.workdir / METRICS_FILE}\n"
                 f"TensorBoard: tensorboard --logdir {self.workdir / 'tensorboard'}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or, with `eval_only`, evaluate) as configured; resumes from `workdir` when it holds checkpoints.

    A start that fails before writing anything removes the folders it created (no empty run folders left)."""
    path = Path(workdir).expanduser().absolute()
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    created = missing[-1] if missing else None  # the outermost folder the run's mkdir makes (e.g. runs/ of runs/x)
    trainer = None
    try:
        trainer = Trainer(config, workdir)
        return trainer.train()
    except BaseException:
        if trainer is not None:
            trainer.checkpoints.close()
            trainer = None
        if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        if trainer is not None:
            trainer.checkpoints.close()


def batch_size_notes(config: ml_collections.ConfigDict, recipe_batch_size: int) -> list[str]:
    """What changes when the global batch is not the recipe's: the learning rate (scaled or not) and
    BatchNorm's per-device batch."""
    notes, batch = [], config.batch_size
    base = config.get("base_batch_size", 0)
    if batch != recipe_batch_size:
        if base:
            notes.append(f"config.batch_size={batch} (the recipe's is {recipe_batch_size}): the learning rate is "
                         f"scaled linearly to {config.learning_rate * batch / base:.4g} "
                         f"({config.learning_rate:g} per {base} images)")
        else:
            notes.append(f"warning: config.batch_size={batch} differs from the recipe's {recipe_batch_size}, and "
                         f"config.base_batch_size=0, so the learning rate stays {config.learning_rate:g} (tuned for "
                         f"{recipe_batch_size}); scale it linearly with --config.base_batch_size={recipe_batch_size} "
                         f"(lr {config.learning_rate * batch / recipe_batch_size:.4g}) or set "
                         f"--config.learning_rate")
    per_device = batch // max(jax.device_count(), 1)
    if not config.eval_only and per_device < 16:
        notes.append(f"warning: BatchNorm sees {per_device} images per device per step: its batch statistics are "
                     f"noisy below ~16; use a larger config.batch_size")
    return notes


def data_parallel_environment() -> str:
    return (f"{jax.process_count()} process(es), {jax.device_count()} {jax.default_backend()} device(s) "
            f"({jax.local_device_count()} local), pid {os.getpid()}")
