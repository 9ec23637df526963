"""The training loop: data-parallel jit over a device mesh, evaluation, checkpoints, resume, logging."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ..checkpoint import METADATA_FILE
from . import optim, preflight, restore, steps
from .checkpoints import CheckpointWriteError, TrainingCheckpoints
from .experiment import ConfigError, Experiment
from .reporting import (METRICS_FILE, TRAIN_METRICS_FILE, JsonLines, Scalars, StopWatch, Stopped, is_main_process, log,
                        progress_bar)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the checkpoints written before stay the latest."""


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


PRODUCER_STOP_SECONDS = 60.0  # the longest a closed `_device_batches` waits for the batch being read


def _device_batches(batches: Iterator[dict[str, np.ndarray]], sharding: NamedSharding,
                    depth: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Each process's rows assembled into global arrays by a background thread, up to `depth` batches ahead, so
    the next batch is read and transferred while the step runs.  A failure of the producer is raised here; the
    thread is a daemon; closing this generator stops it and waits (up to `PRODUCER_STOP_SECONDS`) until it has
    closed `batches`: a pipeline still running while the interpreter shuts down can abort the process (its
    `numpy_function` workers cannot take the GIL any more)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()
    end = object()

    def offer(item: Any) -> bool:
        """Put `item` unless the consumer has gone; False then."""
        while not stopped.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not offer({k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}):
                    return
            offer(end)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            offer(_ProducerError(error))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="device-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, _ProducerError):
                raise item.error
            yield item
    finally:
        stopped.set()
        thread.join(PRODUCER_STOP_SECONDS)


class _ProducerError:
    """The exception that ended the producer thread, handed to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _shapes(batch: dict[str, Any]) -> tuple:
    """A batch's (name, shape, dtype) per array: what a compiled step is specialised to."""
    return tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))


class Trainer:
    """The step loop (`train`) around pure steps (`steps.py`); evaluation (`evaluate`); where the state comes
    from is `restore.py`'s policy, what is written besides checkpoints `reporting.py`'s."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = check_workdir(workdir)
        self.experiment = Experiment(config)
        self.experiment.validate()
        self.info, self.pipeline = self.experiment.info, self.experiment.pipeline
        log(f"{config.model.name} on {self.info.name} ({self.info.num_train} train / {self.info.num_eval} eval "
            f"examples): {data_parallel_environment()}")
        self.model = self.experiment.build_model()
        self.task = self.experiment.task(self.model)
        restore.check_workdir_model(self.workdir, config, self.experiment.num_classes)
        self.mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.data_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.steps_per_epoch = self.pipeline.steps_per_epoch(config.batch_size)
        self.num_steps = (config.num_train_steps if config.num_train_steps > 0
                          else config.num_epochs * self.steps_per_epoch)
        self.schedule = optim.learning_rate_schedule(config, self.steps_per_epoch)
        self.use_ema = bool(config.ema_decay)

        param_shapes = jax.eval_shape(self.model.init, jax.random.key(0),
                                      jnp.zeros((1, config.image_size, config.image_size, 3)))["params"]
        try:
            frozen = optim.frozen_modules(param_shapes, config.frozen_layers)
        except ValueError as error:
            raise ConfigError(f"config.{error}") from error
        if frozen:
            log(f"frozen_layers={len(frozen)}: features_0..features_{len(frozen) - 1} keep their weights")
        self.tx = optim.create_optimizer(config, self.schedule, param_shapes)
        self._init = jax.jit(functools.partial(steps.create_train_state, self.model, self.tx,
                                               image_size=config.image_size, use_ema=self.use_ema),
                             out_shardings=self.replicated)
        self._train_step = jax.jit(
            functools.partial(steps.train_step, model=self.model, task=self.task, tx=self.tx, schedule=self.schedule,
                              ema_decay=config.ema_decay, frozen=frozen, ema_tau=config.ema_tau,
                              prepare=self.pipeline.device_transform(train=True)),
            in_shardings=(self.replicated, self.data_sharding), out_shardings=(self.replicated, self.replicated),
            donate_argnums=0)
        self._eval_step = jax.jit(functools.partial(steps.eval_step, model=self.model, task=self.task,
                                                    prepare=self.pipeline.device_transform(train=False)),
                                  in_shardings=(self.replicated, self.replicated, self.data_sharding),
                                  out_shardings=self.replicated)
        self._eval_executables: dict[tuple, jax.stages.Compiled] = {}
        self.checkpoints = TrainingCheckpoints(self.workdir, keep=config.keep_checkpoints,
                                               async_save=config.async_checkpointing)

    def initial_state(self) -> tuple[steps.TrainState, int]:
        return restore.initial_state(self.config, self.checkpoints, self._init(jax.random.key(self.config.seed)),
                                     self.tx.init, self.use_ema, self.replicated, self.experiment.num_classes)

    # ------------------------------------------------------------------------------------------------ eval
    def evaluate(self, state: steps.TrainState) -> dict[str, float]:
        """The task's metrics on the whole eval split, for the weights and (with EMA) their average."""
        batches = self.pipeline.eval_batches(global_batch_size=self._eval_batch_size,
                                             process_index=jax.process_index(), process_count=jax.process_count())
        weights = [("eval", state.params, state.batch_stats)]
        if self.use_ema:
            weights.append(("eval_ema", state.ema_params, state.ema_batch_stats))
        evaluations = {prefix: self.task.evaluation() for prefix, _, _ in weights}
        for batch in _device_batches(batches, self.data_sharding):
            eval_step = self._eval_step_for(batch)
            for prefix, params, batch_stats in weights:
                evaluations[prefix].add(eval_step(params, batch_stats, batch), batch)
        results: dict[str, Any] = {}
        for prefix, evaluation in evaluations.items():
            results.update({f"{prefix}_{k}": float(v) for k, v in evaluation.result(self.info.num_eval).items()})
        results["eval_examples"] = self.info.num_eval
        return results

    # ----------------------------------------------------------------------------------------------- train
    def train(self) -> dict[str, Any]:
        config, started = self.config, time.time()
        state, start_step = self.initial_state()
        if config.eval_only:
            return self._eval_only(state, start_step)
        train_step = self._compile_train_step(state) if start_step < self.num_steps else self._train_step
        metrics_log = JsonLines(self.workdir / METRICS_FILE, start_step)
        train_log = JsonLines(self.workdir / TRAIN_METRICS_FILE, start_step)
        scalars = Scalars(self.workdir / "tensorboard")
        if is_main_process():
            (self.workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
            (self.workdir / METADATA_FILE).write_text(json.dumps(self.experiment.metadata(), indent=2,
                                                                 sort_keys=True) + "\n")
        batches = _device_batches(self.pipeline.train_batches(
            global_batch_size=config.batch_size, process_index=jax.process_index(),
            process_count=jax.process_count(), start_step=start_step), self.data_sharding)
        watch = StopWatch()
        progress = progress_bar(config.progress_bar, self.num_steps, start_step)
        pending: list[dict[str, jax.Array]] = []
        last_eval: dict[str, Any] = {}
        last_log_time, last_log_step = time.time(), start_step
        finished = False
        try:
            for step in range(start_step + 1, self.num_steps + 1):
                state, metrics = train_step(state, next(batches))
                pending.append(metrics)
                final = step == self.num_steps
                do_eval = final or step % config.eval_every_steps == 0
                do_save = do_eval or step % config.checkpoint_every_steps == 0
                if do_save or step % config.log_every_steps == 0:
                    now = time.time()
                    summary = self._summarize(pending, step)
                    summary["images_per_second"] = (step - last_log_step) * config.batch_size / (now - last_log_time)
                    last_log_time, last_log_step, pending = now, step, []
                    train_log.write({"step": step, **summary})
                    scalars.write(step, {f"train_{k}": v for k, v in summary.items()})
                    if progress is not None:
                        progress.set_postfix(loss=f"{summary['loss']:.4f}", lr=f"{summary['learning_rate']:.3g}",
                                             img_s=f"{summary['images_per_second']:.0f}", refresh=False)
                if do_eval:
                    last_eval = {"step": step, **self.evaluate(state)}
                    metrics_log.write(last_eval)
                    scalars.write(step, {k: v for k, v in last_eval.items() if k != "step"})
                    log(f"\nstep {step}: eval {self.task.describe(last_eval)}")
                if do_save:
                    best = self.task.best_metric
                    self.checkpoints.save(step, state, {best: last_eval[best]} if do_eval else None)
                if progress is not None:
                    progress.update(1)
                at_sync_point = jax.process_count() == 1 or step % config.log_every_steps == 0
                if not final and at_sync_point and watch.should_stop():
                    self._save_and_stop(step, state, pending, saved=do_save, watch=watch)
            finished = True
        finally:
            batches.close()
            watch.restore()
            if progress is not None:
                progress.close()
            if finished:
                self.checkpoints.wait()
            else:  # failing: finish a write in flight, without letting its own failure hide the first one
                with contextlib.suppress(CheckpointWriteError):
                    self.checkpoints.wait()
            scalars.flush()
        if not last_eval:  # already trained to the end in an earlier run
            last_eval = {"step": self.num_steps, **self.evaluate(state)}
        self._print_summary(last_eval, time.time() - started)
        return last_eval

    def _save_and_stop(self, step: int, state: steps.TrainState, pending: list, saved: bool,
                       watch: StopWatch) -> None:
        if not saved:
            if pending:  # never save a diverged state: _summarize raises on NaN/inf
                self._summarize(pending, step)
            self.checkpoints.save(step, state)
        self.checkpoints.wait()
        name, code = watch.describe()
        log(f"\n{name}: saved step {step} to {self.checkpoints.directory}; run the same command to resume")
        raise Stopped(code)

    def _compile_train_step(self, state: steps.TrainState) -> jax.stages.Compiled:
        """Compile ahead of the first step, saying so (it takes seconds to minutes, during which nothing moves), and
        check that it fits in memory before any batch of its size is made."""
        config = self.config
        log(f"compiling the train step ({config.model.name}, global batch {config.batch_size}, "
            f"{config.image_size}x{config.image_size}) ...")
        started = time.time()
        example = self._example_batch(self.pipeline.train_batches(
            global_batch_size=jax.process_count(), process_index=jax.process_index(),
            process_count=jax.process_count()))
        compiled = self._train_step.lower(state, self._abstract(example, config.batch_size)).compile()
        log(f"compiled in {time.time() - started:.1f} s")
        if config.memory_preflight:
            self._memory_preflight(compiled, state, example)
        return compiled

    @staticmethod
    def _example_batch(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The first batch of a generator, which is then closed (its tf.data threads end)."""
        try:
            return next(batches)
        finally:
            batches.close()

    def _abstract(self, example: dict[str, Any], size: int, square: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of a global batch of `size` rows like `example`'s (`square`: images at the run's image size, the
        largest a letterboxed eval batch gets)."""
        shapes = {k: (size, *v.shape[1:]) for k, v in example.items()}
        if square:
            shapes["image"] = (size, self.config.image_size, self.config.image_size, example["image"].shape[-1])
        return {k: jax.ShapeDtypeStruct(shapes[k], v.dtype, sharding=self.data_sharding) for k, v in example.items()}

    def _memory_preflight(self, train_step: jax.stages.Compiled, state: steps.TrainState,
                          example: dict[str, np.ndarray]) -> None:
        """Stop before the first step when the train or eval step cannot fit the devices' free memory."""
        config, devices, eval_size = self.config, jax.device_count(), self._eval_batch_size
        eval_example = self._example_batch(self.pipeline.eval_batches(
            global_batch_size=jax.process_count(), process_index=jax.process_index(),
            process_count=jax.process_count()))

        def input_bytes(batch: dict[str, jax.ShapeDtypeStruct]) -> int:  # per device: the step's batch + 2 in flight
            return 3 * sum(int(np.prod(v.shape)) * v.dtype.itemsize for v in batch.values()) // devices

        def train_need(size: int) -> Optional[preflight.StepMemory]:
            return preflight.StepMemory.of(self._train_step.lower(state, self._abstract(example, size)).compile())

        def eval_need(size: int) -> Optional[preflight.StepMemory]:
            return preflight.StepMemory.of(self._compile_eval(state, self._abstract(eval_example, size, square=True)))

        notes = {preflight.check("train", "batch_size", preflight.StepMemory.of(train_step), config.batch_size,
                                 input_bytes(self._abstract(example, config.batch_size)), train_need, devices,
                                 config.image_size),
                 preflight.check("eval", "eval_batch_size", eval_need(eval_size), eval_size,
                                 input_bytes(self._abstract(eval_example, eval_size, square=True)), eval_need,
                                 devices, config.image_size)}
        for note in notes - {None}:
            log(note)

    @property
    def _eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def _compile_eval(self, state: steps.TrainState, batch: dict[str, Any]) -> jax.stages.Compiled:
        """The eval step compiled for these batch shapes, kept: `evaluate` runs it for every batch of the shapes."""
        key = _shapes(batch)
        if key not in self._eval_executables:
            self._eval_executables[key] = self._eval_step.lower(state.params, state.batch_stats, batch).compile()
        return self._eval_executables[key]

    def _eval_step_for(self, batch: dict[str, jax.Array]):
        return self._eval_executables.get(_shapes(batch), self._eval_step)

    def _eval_only(self, state: steps.TrainState, step: int) -> dict[str, Any]:
        if step == 0 and not self.config.init_from:
            raise ConfigError(f"eval_only: {self.workdir} holds no checkpoint and config.init_from is not set")
        results = {"step": step, **self.evaluate(state)}
        JsonLines(self.workdir / METRICS_FILE, resume_step=math.inf).write(results)
        log(f"eval_only on {self.info.name}/{self.info.eval_split} ({results['eval_examples']} examples): "
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

    def _print_summary(self, last_eval: dict[str, Any], seconds: float) -> None:
        best, best_metric = self.checkpoints.best_step(), self.checkpoints.best_metric()
        best_text = ("no evaluated checkpoint" if best is None
                     else f"best: step {best}, {best_metric[0]} {best_metric[1]:.4f}")
        log(f"done: {self.config.model.name} on {self.info.name}, step {last_eval['step']}: "
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
    base = config.base_batch_size
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
