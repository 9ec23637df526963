"""Learning-rate schedules and optimizers from a config, matching torchvision's reference recipes.

The transforms are chained so the update equals PyTorch's: weight decay is the coupled L2 term added to the
gradient (torch's `weight_decay=`), and the learning rate scales the update last, after RMSprop's momentum
buffer, as in `torch.optim.RMSprop` (optax's `rmsprop` scales before the momentum trace instead).
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "rmsprop", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
    """`learning_rate` is quoted per `base_batch_size` images and scaled linearly with the global batch."""
    base = config.base_batch_size
    return config.learning_rate * config.batch_size / base if base else config.learning_rate


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0, then the recipe's decay counted in whole epochs (torch steps it per epoch)."""
    peak = peak_learning_rate(config)
    sched = config.lr_schedule
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


def _recipe_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                      params: Any) -> optax.GradientTransformation:
    opt = config.optimizer
    mask = decay_mask(params, config.weight_decay_skip_bn_bias)
    clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
    if opt.name == "adamw":
        return optax.chain(*clip, optax.adamw(schedule, b1=opt.b1, b2=opt.b2,
                                              eps=opt.eps, weight_decay=config.weight_decay,
                                              mask=mask))
    if opt.name == "sgd":
        direction = [optax.trace(decay=opt.momentum, nesterov=opt.nesterov)]
    elif opt.name == "rmsprop":
        direction = [optax.scale_by_rms(decay=opt.decay, eps=opt.eps, eps_in_sqrt=False),
                     optax.trace(decay=opt.momentum)]
    else:
        raise ValueError(f"unknown optimizer.name {opt.name!r}; choose one of {', '.join(OPTIMIZERS)}")
    weight_decay = [optax.add_decayed_weights(config.weight_decay, mask)] if config.weight_decay else []
    return optax.chain(*clip, *weight_decay, *direction, optax.scale_by_learning_rate(schedule))
