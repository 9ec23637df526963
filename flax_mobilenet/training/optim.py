"""Learning-rate schedules and optimizers from a config, matching torchvision's reference recipes and ultralytics'
YOLO trainer.

The transforms are chained so the update equals PyTorch's: weight decay is the coupled L2 term added to the
gradient (torch's `weight_decay=`), and the learning rate scales the update last, after RMSprop's momentum
buffer, as in `torch.optim.RMSprop` (optax's `rmsprop` scales before the momentum trace instead).

The 'ultralytics' schedule is ultralytics 8.4's `BaseTrainer` (engine/trainer.py): `build_optimizer`'s three
parameter groups, `_setup_scheduler`'s per-epoch linear lambda, `_do_train`'s per-iteration warm-up of the learning
rates and the momentum, and `optimizer_step`'s gradient clipping (config.grad_clip_norm = 10).  Every
hyperparameter is a function of the update count that optax keeps in the optimizer state, so a restored state
resumes the schedule where it stopped.  One difference: ultralytics steps the optimizer once per
`accumulate = max(round(nbs / batch), 1)` batches (nbs = 64), we once per batch (see `effective_weight_decay`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant", "ultralytics")
ULTRALYTICS_GROUPS = ("weight", "bn", "bias")  # build_optimizer's g[0] (decay), g[1] (no decay), g[2] (no decay)


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """`learning_rate` is quoted per `base_batch_size` images and scaled linearly with the global batch."""
    base = config.base_batch_size
    return config.learning_rate * config.batch_size / base if base else config.learning_rate


def effective_weight_decay(config: ml_collections.ConfigDict) -> float:
    """`weight_decay`, or with `weight_decay_nominal_batch_size` (ultralytics' `nbs`, 64) set, ultralytics' scaling
    `weight_decay * batch_size * accumulate / nbs` (`_build_train_pipeline`) with accumulate = 1: we update once per
    batch.  At batch_size >= 43 ultralytics' accumulate = max(round(nbs / batch), 1) is 1 too, and this is its value
    exactly; below, it sums the gradients of round(nbs / batch) batches per step with the decay scaled by
    batch * accumulate / nbs, and our per-batch steps with the decay scaled by batch / nbs apply the same decay and
    the same gradient sum per image (its loss is already x batch), the momentum and the EMA ticking per batch."""
    nominal = config.weight_decay_nominal_batch_size
    return config.weight_decay * config.batch_size / nominal if nominal else config.weight_decay


@dataclasses.dataclass(frozen=True)
class UltralyticsSchedule:
    """ultralytics' learning rates and momentum as functions of the update count (= its batch index `ni`).

    Calling it gives the lr of the weight and BatchNorm-weight groups (g[0], g[1]); `bias_lr` that of the bias
    group (g[2]); `momentum` the SGD/RMSprop momentum of all three.  After the warm-up, lr = lr0 * lf(epoch) with
    `_setup_scheduler`'s linear lf(e) = max(1 - e / epochs, 0) * (1 - lrf) + lrf, constant within an epoch (LambdaLR
    stepped at each epoch's start).  During the warm-up (ni <= nw, `_do_train`), np.interp(ni, [0, nw], ...): the
    bias lr from warmup_bias_lr and the others from 0 to lr0 * lf(epoch), the momentum from warmup_momentum to
    momentum.  nw = round(min(warmup_epochs, max(epochs - 1, 0)) * nb) (`_get_warmup_iterations`, 8.4: no minimum
    of 100 iterations as in older releases; 0 warmup_epochs: none)."""

    lr0: float
    lrf: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    warmup_bias_lr: float
    warmup_momentum: float
    final_momentum: float

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> "UltralyticsSchedule":
        sched, steps_per_epoch = config.lr_schedule, max(1, steps_per_epoch)
        # ultralytics' `epochs` is the run's length: num_train_steps, when set, in (started) epochs
        epochs = (math.ceil(config.num_train_steps / steps_per_epoch) if config.num_train_steps > 0
                  else config.num_epochs)
        warmup_epochs = min(sched.warmup_epochs, max(epochs - 1, 0))
        warmup_steps = round(warmup_epochs * steps_per_epoch) if warmup_epochs > 0 else 0  # Python round
        return cls(lr0=peak_learning_rate(config), lrf=sched.lrf, epochs=max(1, epochs),
                   steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps, warmup_bias_lr=sched.warmup_bias_lr,
                   warmup_momentum=sched.warmup_momentum, final_momentum=config.optimizer.momentum)

    def lf(self, epoch: jax.Array) -> jax.Array:
        return jnp.maximum(1.0 - epoch / self.epochs, 0.0) * (1.0 - self.lrf) + self.lrf

    def _warmup(self, count: jax.Array, start: float, end: jax.Array) -> jax.Array:
        if not self.warmup_steps:
            return end
        x = jnp.minimum(count, self.warmup_steps).astype(jnp.float32) / self.warmup_steps
        return jnp.where(count < self.warmup_steps, start + (end - start) * x, end)  # interp; at ni == nw: the end

    def _target(self, count: jax.Array) -> jax.Array:
        return jnp.float32(self.lr0) * self.lf((count // self.steps_per_epoch).astype(jnp.float32))

    def __call__(self, count: Union[int, jax.Array]) -> jax.Array:
        count = jnp.asarray(count)
        return self._warmup(count, 0.0, self._target(count))

    def bias_lr(self, count: Union[int, jax.Array]) -> jax.Array:
        count = jnp.asarray(count)
        return self._warmup(count, self.warmup_bias_lr, self._target(count))

    def momentum(self, count: Union[int, jax.Array]) -> jax.Array:
        count = jnp.asarray(count)
        return self._warmup(count, self.warmup_momentum, jnp.float32(self.final_momentum))


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0, then the recipe's decay counted in whole epochs (torch steps it per epoch); or
    ultralytics' schedule (an `UltralyticsSchedule`: the weights' lr, with the bias lr and momentum besides)."""
    peak = peak_learning_rate(config)
    sched = config.lr_schedule
    if sched.name == "ultralytics":
        return UltralyticsSchedule.from_config(config, steps_per_epoch)
    warmup_steps = int(round(sched.warmup_epochs * steps_per_epoch))
    if sched.name == "step":
        main = optax.exponential_decay(peak, transition_steps=max(1, int(sched.decay_epochs * steps_per_epoch)),
                                       decay_rate=sched.decay_rate, staircase=True)
    elif sched.name == "cosine":
        total = max(1, config.num_epochs * steps_per_epoch - warmup_steps)
        main = optax.cosine_decay_schedule(peak, decay_steps=total)
    elif sched.name == "poly":  # torch's PolynomialLR stepped per iteration (the segmentation references)
        total = max(1, config.num_epochs * steps_per_epoch - warmup_steps)
        main = optax.polynomial_schedule(peak, 0.0, power=sched.power, transition_steps=total)
    elif sched.name == "constant":
        main = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown lr_schedule.name {sched.name!r}; choose one of {', '.join(SCHEDULES)}")
    if not warmup_steps:
        return main
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def decay_mask(params: Any, skip_bn_and_bias: bool) -> Any:
    """Which parameters weight decay applies to: all, or only kernels (BN scale/bias and biases are 1-D)."""
    return jax.tree.map(lambda p: not skip_bn_and_bias or p.ndim > 1, params)


def frozen_modules(params: Any, frozen_layers: int) -> frozenset[str]:
    """The top-level modules `frozen_layers` keeps as they are: the first N backbone layers, features_0..N-1
    (torchvision's `trainable_backbone_layers` idea, counted in layers from the input)."""
    layers = sum(1 for name in params if name.startswith("features_"))
    if not isinstance(frozen_layers, int) or not 0 <= frozen_layers <= layers:
        raise ValueError(f"frozen_layers={frozen_layers!r} must be an integer from 0 to the model's {layers} layers "
                         f"(features_0..features_{layers - 1})")
    return frozenset(f"features_{i}" for i in range(frozen_layers))


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                     params: Any) -> optax.GradientTransformation:
    """The recipe's optimizer; the modules `frozen_modules` names get no update (nor weight decay)."""
    frozen = frozen_modules(params, config.frozen_layers)
    tx = _recipe_optimizer(config, schedule, params)
    if not frozen:
        return tx
    labels = {name: jax.tree.map(lambda _: "frozen" if name in frozen else "trained", tree)
              for name, tree in params.items()}
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def ultralytics_group_labels(params: Any) -> Any:
    """`build_optimizer`'s groups by Flax's names: 'bias' (convolution, linear and BatchNorm biases: g[2]), the
    kernels (ndim > 1: g[0], with weight decay) and the rest, BatchNorm's 'scale' (g[1])."""
    def label(path, leaf):
        if getattr(path[-1], "key", None) == "bias":
            return "bias"
        return "weight" if leaf.ndim > 1 else "bn"
    return jax.tree_util.tree_map_with_path(label, params)


def _scheduled_trace(momentum: Callable[[jax.Array], jax.Array], nesterov: bool) -> optax.GradientTransformation:
    """torch's momentum buffer with the momentum a function of the update count (kept in the state)."""
    return optax.inject_hyperparams(optax.trace, hyperparam_dtype=jnp.float32)(decay=momentum, nesterov=nesterov)


def _ultralytics_optimizer(config: ml_collections.ConfigDict, schedule: UltralyticsSchedule,
                           params: Any) -> optax.GradientTransformation:
    """Global-norm clipping (`optimizer_step`), then one update rule per group with its own lr: the bias group
    `schedule.bias_lr`, the others `schedule`; decay on the kernels only (with `weight_decay_skip_bn_bias`, which
    ultralytics always does), scaled as `effective_weight_decay`."""
    del params  # the labels are computed from the tree the update sees (masked when frozen_layers is set)
    opt = config.optimizer
    decay = effective_weight_decay(config)
    clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []

    def group(lr: optax.Schedule, weight_decay: float) -> optax.GradientTransformation:
        if opt.name == "adamw":  # torch AdamW: betas fixed (ultralytics warms up only a 'momentum' key)
            return optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=weight_decay)
        if opt.name == "sgd":
            direction = [_scheduled_trace(schedule.momentum, opt.nesterov)]
        elif opt.name == "rmsprop":
            direction = [optax.scale_by_rms(decay=opt.decay, eps=opt.eps, eps_in_sqrt=False),
                         _scheduled_trace(schedule.momentum, False)]
        else:
            raise ValueError(f"unknown optimizer.name {opt.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        weight_decay_tx = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
        return optax.chain(*weight_decay_tx, *direction, optax.scale_by_learning_rate(lr))

    other_decay = 0.0 if config.weight_decay_skip_bn_bias else decay
    groups = {"weight": group(schedule, decay), "bn": group(schedule, other_decay),
              "bias": group(schedule.bias_lr, other_decay)}
    return optax.chain(*clip, optax.multi_transform(groups, ultralytics_group_labels))


def _recipe_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                      params: Any) -> optax.GradientTransformation:
    if isinstance(schedule, UltralyticsSchedule):
        return _ultralytics_optimizer(config, schedule, params)
    opt = config.optimizer
    mask = decay_mask(params, config.weight_decay_skip_bn_bias)
    clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    if opt.name == "adamw":
        return optax.chain(*clip, optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                                              eps=opt.eps, weight_decay=effective_weight_decay(config),
                                              mask=mask))
    if opt.name == "sgd":
        direction = [optax.trace(decay=opt.momentum, nesterov=opt.nesterov)]
    elif opt.name == "rmsprop":
        direction = [optax.scale_by_rms(decay=opt.decay, eps=opt.eps, eps_in_sqrt=False),
                     optax.trace(decay=opt.momentum)]
    else:
        raise ValueError(f"unknown optimizer.name {opt.name!r}; choose one of {', '.join(OPTIMIZERS)}")
    decay = effective_weight_decay(config)
    weight_decay = [optax.add_decayed_weights(decay, mask)] if decay else []
    return optax.chain(*clip, *weight_decay, *direction, optax.scale_by_learning_rate(schedule))
