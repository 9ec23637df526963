"""Train state and the pure train/eval step functions (jitted over a device mesh by the trainer)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from .tasks import Task

Metrics = dict[str, jax.Array]
Batch = dict[str, jax.Array]
# the batch as the input pipeline ships it (uint8 images) -> as the model takes it: the device share of the
# preprocessing (`input_pipeline.Pipeline.device_transform`); None: the batch is already the model's input
Prepare = Optional[Callable[[Batch], Batch]]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the input position (which is `step`)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: checkpoints store plain arrays
    ema_params: Optional[Any] = None
    ema_batch_stats: Optional[Any] = None


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_size: int,
                       use_ema: bool) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=jax.random.key_data(train_rng),
                      ema_params=params if use_ema else None, ema_batch_stats=batch_stats if use_ema else None)


def ema_decay_at(step: jax.Array, ema_decay: float, ema_tau: float = 0.0) -> jax.Array:
    """The EMA decay of the update after `step` updates: `ema_decay`, or with `ema_tau` ultralytics' ModelEMA ramp
    d = ema_decay * (1 - exp(-updates / tau)), updates = step + 1 (it counts from 1 at the first update, and
    updates once per optimizer step: once per train step here)."""
    if not ema_tau:
        return jnp.asarray(ema_decay, jnp.float32)
    updates = jnp.asarray(step).astype(jnp.float32) + 1.0
    return ema_decay * -jnp.expm1(-updates / ema_tau)  # expm1: 1 - exp(-x) stays exact for small x


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, task: Task,
               tx: optax.GradientTransformation, schedule: optax.Schedule, ema_decay: float,
               frozen: frozenset[str] = frozenset(), ema_tau: float = 0.0, prepare: Prepare = None
               ) -> tuple[TrainState, Metrics]:
    """One optimizer step on a (globally sharded) batch, the task's loss. BatchNorm statistics are those of the
    global batch. The `frozen` top-level modules are constants of the loss: no backward pass runs through the
    layers before the first trained one (their gradients are zeros, which `tx` must ignore; their BatchNorm
    statistics still update, as torch's `requires_grad_(False)` leaves them). The EMA (of the params and the
    BatchNorm statistics: ultralytics' ModelEMA averages every float of the state) decays by `ema_decay_at`.
    `prepare` (augmentation, normalisation) runs first, inside the same jit."""
    if prepare is not None:
        batch = prepare(batch)
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    trained = {name: tree for name, tree in state.params.items() if name not in frozen}
    constants = {name: tree for name, tree in state.params.items() if name in frozen}

    def loss_fn(params):
        outputs, updates = model.apply({"params": {**constants, **params}, "batch_stats": state.batch_stats},
                                       batch["image"], train=True, rngs={"dropout": dropout_rng},
                                       mutable=["batch_stats"])
        loss, task_metrics = task.loss(outputs, batch)
        return loss, (task_metrics, updates["batch_stats"])

    (loss, (task_metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
    grads = {name: grads[name] if name in grads else jax.tree.map(jnp.zeros_like, tree)
             for name, tree in state.params.items()}  # the params' own order: tx's state follows it
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if ema_params is not None:
        decay = ema_decay_at(state.step, ema_decay, ema_tau) if ema_tau else ema_decay
        blend = lambda avg, new: decay * avg + (1.0 - decay) * new  # noqa: E731
        ema_params = jax.tree.map(blend, ema_params, params)
        ema_batch_stats = jax.tree.map(blend, ema_batch_stats, batch_stats)
    grad_norm = optax.tree.norm(grads)
    metrics = {
        "loss": loss,
        **task_metrics,
        "learning_rate": schedule(state.step),
        "grad_norm": grad_norm,
        # checked before every save, so a checkpoint never holds weights a NaN/inf already reached
        "nonfinite": (~(jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))
                        )).astype(jnp.int32),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema_params, ema_batch_stats=ema_batch_stats)
    return new_state, metrics


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, model: nn.Module, task: Task,
              prepare: Prepare = None) -> Any:
    """The task's eval outputs of a padded batch (sums over its real examples, or per-example detections);
    `prepare` (normalisation) first."""
    if prepare is not None:
        batch = prepare(batch)
    outputs = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=False)
    return task.eval_outputs(outputs, batch)
