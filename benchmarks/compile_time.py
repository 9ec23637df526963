"""Compile time of the train step: lowering (tracing to StableHLO) and XLA compilation, timed apart, per step kind.

Each step is built as train.py builds it (`training.Experiment(config)` from a file in configs/, the model, task,
schedule and optimizer, `steps.train_step` under `jax.jit` with the state donated, over a mesh of all devices) and
lowered for the state's shapes and the shapes of one real batch of the run's input pipeline.  The datasets are the
embedded ones (`shapes` for detection and segmentation, `digits` for classification), so no data is needed; only
shapes matter to a compile.  The persistent compilation cache is off: every repeat lowers a fresh `jax.jit` and
compiles it.

Where the time goes: for each step, its parts are lowered and compiled alone too (the model's forward and backward
with a plain sum as the loss; the task's loss with its gradient with respect to the model's outputs; the optimizer
update), with their StableHLO op counts (`lowered.as_text()`) and the compiled HLO's instruction count.

    python benchmarks/compile_time.py [--steps ssdlite lraspp v3_large yolov8n] [--repeats 3] [--batch 8]
    XLA_FLAGS=--xla_dump_to=/tmp/dump python benchmarks/compile_time.py --steps ssdlite --repeats 1
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from flax_mobilenet.training import optim, steps  # noqa: E402
from flax_mobilenet.training.experiment import Experiment  # noqa: E402

# step kind -> (config file, overrides): the COCO/ImageNet recipes on the embedded datasets, at benchmark sizes
STEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "ssdlite": ("ssdlite_coco.py", {"dataset": "shapes", "model.num_classes": -1, "image_size": 320}),
    "lraspp": ("lraspp_coco_voc.py", {"dataset": "shapes", "model.num_classes": -1, "image_size": 128}),
    "v3_large": ("v3_large.py", {"dataset": "digits", "model.num_classes": -1, "image_size": 224}),
    "yolov8n": ("yolov8n_coco.py", {"dataset": "shapes", "model.num_classes": -1, "image_size": 256}),
}


def load_config(file: str, overrides: dict[str, Any], batch: int):
    spec = importlib.util.spec_from_file_location(f"config_{Path(file).stem}", ROOT / "configs" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in {**overrides, "batch_size": batch, "eval_batch_size": batch}.items():
        *groups, leaf = key.split(".")
        node = config
        for group in groups:
            node = node[group]
        node[leaf] = value
    return config


def stablehlo_ops(lowered: jax.stages.Lowered) -> int:
    """Operations in the lowered module (one `stablehlo.`/`chlo.`/`func.call` op per line)."""
    return len(re.findall(r"^\s*(?:%\S+ = )?\"?(?:stablehlo|chlo|func\.call|call)\b", lowered.as_text(), re.M))


def hlo_instructions(compiled: jax.stages.Compiled) -> int:
    """Instructions of the optimized HLO module(s), fusions' bodies included."""
    return len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", compiled.as_text(), re.M))


def timed(build: Callable[[], jax.stages.Wrapped], *args: Any) -> tuple[float, float, int, int]:
    """(lower s, compile s, StableHLO ops, HLO instructions) of a freshly built jitted function."""
    started = time.perf_counter()
    lowered = build().lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    return lowered_at - started, done - lowered_at, stablehlo_ops(lowered), hlo_instructions(compiled)


class StepParts:
    """A run's train step and its parts, built as the trainer builds them, with the shapes to lower them for."""

    def __init__(self, config):
        self.config = config
        experiment = Experiment(config)
        experiment.validate()
        self.model = experiment.build_model()
        self.task = experiment.task(self.model)
        steps_per_epoch = experiment.pipeline.steps_per_epoch(config.batch_size)
        self.schedule = optim.learning_rate_schedule(config, steps_per_epoch)
        image = jnp.zeros((1, config.image_size, config.image_size, 3))
        param_shapes = jax.eval_shape(self.model.init, jax.random.key(0), image)["params"]
        self.frozen = optim.frozen_modules(param_shapes, config.frozen_layers)
        self.tx = optim.create_optimizer(config, self.schedule, param_shapes)
        self.state = jax.eval_shape(functools.partial(steps.create_train_state, self.model, self.tx,
                                                      image_size=config.image_size, use_ema=bool(config.ema_decay)),
                                    jax.random.key(config.seed))
        self.prepare = experiment.pipeline.device_transform(train=True)
        first = next(experiment.pipeline.train_batches(global_batch_size=config.batch_size, process_index=0,
                                                       process_count=1))
        self.batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in first.items()}
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        self.replicated, self.split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))

    def train_step(self) -> jax.stages.Wrapped:
        """The trainer's `_train_step`."""
        config = self.config
        return jax.jit(functools.partial(steps.train_step, model=self.model, task=self.task, tx=self.tx,
                                         schedule=self.schedule, ema_decay=config.ema_decay, frozen=self.frozen,
                                         ema_tau=config.ema_tau, prepare=self.prepare),
                       in_shardings=(self.replicated, self.split), out_shardings=(self.replicated, self.replicated),
                       donate_argnums=0)

    def _forward(self, params: Any, batch_stats: Any, image: jax.Array) -> Any:
        outputs, _ = self.model.apply({"params": params, "batch_stats": batch_stats}, image, train=True,
                                      rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
        return outputs

    def parts(self) -> dict[str, tuple[Callable[[], jax.stages.Wrapped], tuple]]:
        """name -> (build, args): the device share of the input pipeline (augmentation, normalisation), the
        model's forward + backward, the loss + its gradient, the optimizer update."""
        state, batch = self.state, jax.eval_shape(self.prepare, self.batch)
        outputs = jax.eval_shape(self._forward, state.params, state.batch_stats, batch["image"])

        def model(params, batch_stats, image, cotangents):  # cotangents an input: XLA cannot fold them
            outputs, backward = jax.vjp(lambda p: self._forward(p, batch_stats, image), params)
            return outputs, backward(cotangents)

        def loss(outputs, batch):
            return jax.value_and_grad(lambda o: self.task.loss(o, batch)[0])(outputs)

        def update(grads, opt_state, params):
            return self.tx.update(grads, opt_state, params)

        return {"prepare": (lambda: jax.jit(self.prepare), (self.batch,)),
                "model fwd+bwd": (lambda: jax.jit(model), (state.params, state.batch_stats, batch["image"], outputs)),
                "loss + grad": (lambda: jax.jit(loss), (outputs, batch)),
                "optimizer": (lambda: jax.jit(update), (state.params, state.opt_state, state.params))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--repeats", type=int, default=3, help="lower + compile rounds of the whole step (median)")
    parser.add_argument("--batch", type=int, default=8, help="global batch size (default 8)")
    parser.add_argument("--no-parts", action="store_true", help="time the whole step only")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); persistent "
          f"compilation cache off; medians of {args.repeats}")
    header = f"{'step':<10} {'part':<14} {'size':>5} {'dtype':>8} {'lower s':>8} {'compile s':>9} " \
             f"{'StableHLO ops':>13} {'HLO instr':>9}"
    print(header)
    for kind in args.steps:
        file, overrides = STEPS[kind]
        config = load_config(file, overrides, args.batch)
        step = StepParts(config)
        dtype = "bfloat16" if config.half_precision else "float32"
        rounds = [timed(step.train_step, step.state, step.batch) for _ in range(args.repeats)]
        lower, compile_ = (statistics.median(r[i] for r in rounds) for i in range(2))
        print(f"{kind:<10} {'train step':<14} {config.image_size:>5} {dtype:>8} {lower:>8.1f} {compile_:>9.1f} "
              f"{rounds[0][2]:>13} {rounds[0][3]:>9}  (rounds: "
              f"{', '.join(f'{r[0]:.1f}+{r[1]:.1f}' for r in rounds)})", flush=True)
        if not args.no_parts:
            for name, (build, part_args) in step.parts().items():
                lower, compile_, ops, instructions = timed(build, *part_args)
                print(f"{'':<10} {name:<14} {'':>5} {'':>8} {lower:>8.1f} {compile_:>9.1f} {ops:>13} "
                      f"{instructions:>9}", flush=True)


if __name__ == "__main__":
    main()
