"""Train state and the pure train/eval step functions (jitted over a device mesh by the trainer)."""
from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Metrics = dict[str, jax.Array]


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


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example loss; smoothing as torch's CrossEntropyLoss(label_smoothing=): mix with the uniform target."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k highest logits (a tie with the label counts in its favour)."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, label_smoothing: float,
               ema_decay: float) -> tuple[TrainState, Metrics]:
    """One optimizer step on a (globally sharded) batch. BatchNorm statistics are those of the global batch."""
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                      train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
    if ema_params is not None:
        blend = lambda avg, new: ema_decay * avg + (1.0 - ema_decay) * new  # noqa: E731
        ema_params = jax.tree.map(blend, ema_params, params)
        ema_batch_stats = jax.tree.map(blend, ema_batch_stats, batch_stats)
    grad_norm = optax.tree.norm(grads)
    metrics = {
        "loss": loss,
        "top1": jnp.mean(_topk_correct(logits, batch["label"], 1)),
        "learning_rate": schedule(state.step),
        "grad_norm": grad_norm,
        # checked before every save, so a checkpoint never holds weights a NaN/inf already reached
        "nonfinite": (~(jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(params))
                        )).astype(jnp.int32),
    }
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                              ema_params=ema_params, ema_batch_stats=ema_batch_stats)
    return new_state, metrics


def eval_step(params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, model: nn.Module) -> Metrics:
    """Sums over the real (mask 1) examples of a padded batch; the caller adds them up over batches."""
    logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=False)
    mask = batch["mask"]
    return {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "top1": jnp.sum(_topk_correct(logits, batch["label"], 1) * mask),
        "top5": jnp.sum(_topk_correct(logits, batch["label"], min(5, logits.shape[-1])) * mask),
        "count": jnp.sum(mask),
    }
