"""ultralytics' YOLO training recipe (optim.py's 'ultralytics' schedule and param groups, steps.py's ModelEMA ramp)
against ultralytics 8.4's own code: `BaseTrainer.build_optimizer`, `_setup_scheduler` and `_get_warmup_iterations`
driven with a stand-in trainer, `_do_train`'s warm-up block copied, `optimizer_step`'s clipping, `ModelEMA`."""
import importlib.util
import types
import warnings
from pathlib import Path

import yolo_reference  # noqa: F401  (first: the torchvision stub and the offline settings ultralytics needs)
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.torch_utils import ModelEMA

from flax_mobilenet.training import optim, steps
from flax_mobilenet.training.defaults import base_config, ultralytics_recipe

BATCH = 128  # ultralytics: accumulate = max(round(64 / 128), 1) = 1, weight decay x 128 / 64
STEPS_PER_EPOCH = 5
EPOCHS = 4
WARMUP_EPOCHS = 1.5  # nw = round(1.5 * 5) = 8: the warm-up ends inside epoch 1


class TinyTorch(torch.nn.Module):
    """One module of each of build_optimizer's kinds: a conv without bias, BatchNorm, a conv and a linear with."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Conv2d(4, 5, 1)
        self.fc = torch.nn.Linear(5, 2)


# torch name -> our Flax path (conv kernels HWIO, linear kernels (in, out); BatchNorm's weight is 'scale')
FLAX_PATHS = {"conv.weight": ("conv", "kernel"), "bn.weight": ("bn", "scale"), "bn.bias": ("bn", "bias"),
              "head.weight": ("head", "kernel"), "head.bias": ("head", "bias"),
              "fc.weight": ("fc", "kernel"), "fc.bias": ("fc", "bias")}


def _to_flax(array: np.ndarray) -> np.ndarray:
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T if array.ndim == 2 else array


def _to_torch(array) -> torch.Tensor:
    array = np.asarray(array)
    return torch.from_numpy(np.array(  # a writable copy
        array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T if array.ndim == 2 else array))


def _flax_tree(named: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in named.items():
        module, leaf = FLAX_PATHS[name]
        tree.setdefault(module, {})[leaf] = jnp.asarray(_to_flax(value))
    return tree


def _recipe_config():
    config = ultralytics_recipe(base_config())
    config.batch_size = BATCH
    config.num_epochs = EPOCHS
    config.learning_rate = 0.05  # larger than ultralytics' 0.01, lrf and decay too: any mismatch shows
    config.weight_decay = 0.01
    config.lr_schedule.update(warmup_epochs=WARMUP_EPOCHS, lrf=0.2)
    return config


def _gradients(num_steps: int, named: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    scales = (0.3, 3.0)  # global norms ~4 (not clipped) and ~40 (clipped to 10)
    return [{k: (scales[i % 2] * rng.normal(size=v.shape)).astype(np.float32) for k, v in named.items()}
            for i in range(num_steps)]


def _ultralytics_run(config, model: torch.nn.Module, grads_per_step):
    """ultralytics' optimizer, scheduler and warm-up, stepped once per batch (accumulate is 1 at this batch)."""
    args = types.SimpleNamespace(
        lr0=config.learning_rate, lrf=config.lr_schedule.lrf, cos_lr=False, momentum=config.optimizer.momentum,
        weight_decay=config.weight_decay, nbs=config.weight_decay_nominal_batch_size,
        warmup_epochs=config.lr_schedule.warmup_epochs, warmup_bias_lr=config.lr_schedule.warmup_bias_lr,
        warmup_momentum=config.lr_schedule.warmup_momentum)
    trainer = types.SimpleNamespace(args=args, epochs=EPOCHS, data={})
    # _build_train_pipeline (engine/trainer.py:321-322)
    accumulate = max(round(args.nbs / BATCH), 1)
    assert accumulate == 1
    weight_decay = args.weight_decay * BATCH * accumulate / args.nbs
    trainer.optimizer = BaseTrainer.build_optimizer(trainer, model, name="SGD", lr=args.lr0, momentum=args.momentum,
                                                    decay=weight_decay)
    BaseTrainer._setup_scheduler(trainer)
    nb = STEPS_PER_EPOCH
    nw = BaseTrainer._get_warmup_iterations(trainer, nb)
    assert nw == 8
    trainer.scheduler.last_epoch = -1  # _setup_train: start_epoch - 1
    names = {id(p): name for name, p in model.named_parameters()}
    groups = [sorted(names[id(p)] for p in group["params"]) for group in trainer.optimizer.param_groups]
    params, hyperparams = [], []
    for epoch in range(EPOCHS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 'Detected lr_scheduler.step() before optimizer.step()'
            trainer.scheduler.step()  # _do_train: at each epoch's start
        for i in range(nb):
            ni = i + nb * epoch
            if nw and ni <= nw:  # _do_train's warm-up, engine/trainer.py:522-534 (8.4.190), as is
                xi = [0, nw]
                for x in trainer.optimizer.param_groups:
                    x["lr"] = float(np.interp(ni, xi, [args.warmup_bias_lr if x.get("param_group") == "bias" else 0.0,
                                                       x["initial_lr"] * trainer.lf(epoch)]))
                    if "momentum" in x:
                        x["momentum"] = float(np.interp(ni, xi, [args.warmup_momentum, args.momentum]))
            hyperparams.append([(x["lr"], x["momentum"]) for x in trainer.optimizer.param_groups])
            for name, p in model.named_parameters():
                p.grad = torch.from_numpy(grads_per_step[ni][name].copy())
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)  # optimizer_step (trainer.py:913)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            params.append({k: v.detach().numpy().copy() for k, v in model.named_parameters()})
    return groups, hyperparams, params


def _run(tx, params, grads, opt_state=None):
    opt_state = tx.init(params) if opt_state is None else opt_state
    history = []
    for g in grads:
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history, opt_state


def test_sgd_groups_warmup_and_schedule_match_ultralytics():
    config = _recipe_config()
    torch.manual_seed(0)
    model = TinyTorch()
    named = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    num_steps = EPOCHS * STEPS_PER_EPOCH
    grads = _gradients(num_steps, named)

    groups, hyperparams, reference = _ultralytics_run(config, model, grads)

    # build_optimizer's groups (weight with decay, BatchNorm weight, bias) = ours by Flax names
    labels = optim.ultralytics_group_labels(_flax_tree(named))
    ours = [sorted(name for name, (m, leaf) in FLAX_PATHS.items() if labels[m][leaf] == group)
            for group in optim.ULTRALYTICS_GROUPS]
    assert groups == ours == [["conv.weight", "fc.weight", "head.weight"], ["bn.weight"],
                              ["bn.bias", "fc.bias", "head.bias"]]
    assert optim.effective_weight_decay(config) == pytest.approx(0.02)

    schedule = optim.learning_rate_schedule(config, STEPS_PER_EPOCH)
    assert isinstance(schedule, optim.UltralyticsSchedule) and schedule.warmup_steps == 8
    for step, ((lr_w, m_w), (lr_bn, m_bn), (lr_b, m_b)) in enumerate(hyperparams):
        assert lr_w == lr_bn and m_w == m_bn == m_b
        np.testing.assert_allclose([float(schedule(step)), float(schedule.bias_lr(step)),
                                    float(schedule.momentum(step))], [lr_w, lr_b, m_w], rtol=1e-6, atol=1e-9,
                                   err_msg=f"step {step}")
    # the warm-up's ends and the epochs' steps, in values
    assert float(schedule(0)) == 0.0 and float(schedule.bias_lr(0)) == pytest.approx(0.1)
    assert float(schedule.momentum(0)) == pytest.approx(0.8) and float(schedule.momentum(8)) == pytest.approx(0.937)
    assert float(schedule(8)) == float(schedule(9)) == pytest.approx(0.05 * ((1 - 1 / 4) * 0.8 + 0.2))
    assert float(schedule.bias_lr(9)) == float(schedule(9))

    tx = optim.create_optimizer(config, schedule, _flax_tree(named))
    history, _ = _run(tx, _flax_tree(named), [_flax_tree(g) for g in grads])
    worst = 0.0
    for step, (theirs, mine) in enumerate(zip(reference, history)):
        for name, (module, leaf) in FLAX_PATHS.items():
            diff = np.abs(np.asarray(mine[module][leaf]) - _to_flax(theirs[name])).max()
            worst = max(worst, float(diff))
            assert diff < 1e-6, f"step {step} {name}: {diff:.3g}"
    print(f"max |ours - ultralytics| over {num_steps} steps: {worst:.2g}")
    moved = max(np.abs(reference[-1][k] - named[k]).max() for k in named)
    assert moved > 0.1  # the parameters travelled far enough for a wrong rule to show


def test_schedule_position_resumes_from_the_optimizer_state():
    config = _recipe_config()
    rng = np.random.default_rng(1)
    named = {k: rng.normal(size=v).astype(np.float32) for k, v in
             {"conv.weight": (4, 3, 3, 3), "bn.weight": (4,), "bn.bias": (4,), "head.weight": (5, 4, 1, 1),
              "head.bias": (5,), "fc.weight": (2, 5), "fc.bias": (2,)}.items()}
    grads = [_flax_tree(g) for g in _gradients(13, named)]
    params = _flax_tree(named)
    schedule = optim.learning_rate_schedule(config, STEPS_PER_EPOCH)

    straight, _ = _run(optim.create_optimizer(config, schedule, params), params, grads)
    first, opt_state = _run(optim.create_optimizer(config, schedule, params), params, grads[:7])  # inside warm-up
    saved = flax.serialization.to_bytes(opt_state)
    tx = optim.create_optimizer(config, optim.learning_rate_schedule(config, STEPS_PER_EPOCH), params)  # a new run
    restored = flax.serialization.from_bytes(tx.init(params), saved)
    resumed, _ = _run(tx, first[-1], grads[7:], restored)
    fresh, _ = _run(tx, first[-1], grads[7:])  # the momentum buffers and the schedule's position lost
    for module, leaves in straight[-1].items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(np.asarray(resumed[-1][module][leaf]), np.asarray(value))
    assert not np.allclose(np.asarray(fresh[-1]["conv"]["kernel"]), np.asarray(straight[-1]["conv"]["kernel"]))
    counts = {int(x) for x in jax.tree.leaves(restored) if getattr(x, "dtype", None) == jnp.int32 and x.ndim == 0}
    assert counts == {7}  # every schedule and injected momentum counts updates in the state


def test_frozen_layers_with_the_ultralytics_groups():
    config = _recipe_config()
    config.frozen_layers = 1
    params = {f"features_{i}": {"conv": {"kernel": jnp.ones((3, 3, 2, 2))},
                                "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}} for i in range(2)}
    tx = optim.create_optimizer(config, optim.learning_rate_schedule(config, STEPS_PER_EPOCH), params)
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    for _ in range(2):  # step 0 has lr 0 on the weights
        updates, opt_state = tx.update(grads, opt_state, params)
    assert not any(np.any(np.asarray(u)) for u in jax.tree.leaves(updates["features_0"]))
    assert all(np.all(np.asarray(u) < 0) for u in jax.tree.leaves(updates["features_1"]))


class TinyFlax(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), padding="VALID", use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        return nn.Dense(2, name="fc")(x.mean((1, 2)))


class MeanSquaredError:
    def loss(self, outputs, batch):
        return jnp.mean((outputs - batch["target"]) ** 2), {}


def _load_into_torch(model: torch.nn.Module, params, batch_stats) -> None:
    values = {"conv.weight": params["conv"]["kernel"], "bn.weight": params["bn"]["scale"],
              "bn.bias": params["bn"]["bias"], "bn.running_mean": batch_stats["bn"]["mean"],
              "bn.running_var": batch_stats["bn"]["var"], "fc.weight": params["fc"]["kernel"],
              "fc.bias": params["fc"]["bias"]}
    state = model.state_dict()
    with torch.no_grad():
        for name, value in values.items():
            state[name].copy_(_to_torch(value))


def test_ema_matches_ultralytics_model_ema():
    ema_decay, ema_tau = 0.9, 3.0  # a short ramp, so that it shows within a few updates
    # the recipe's values as functions of the update count
    reference = ModelEMA(torch.nn.Linear(1, 1))
    np.testing.assert_allclose([float(steps.ema_decay_at(u - 1, 0.9999, 2000.0)) for u in (1, 2, 100, 2000, 20000)],
                               [reference.decay(u) for u in (1, 2, 100, 2000, 20000)], rtol=1e-6)
    assert float(steps.ema_decay_at(5, 0.999)) == pytest.approx(0.999)  # ema_tau 0: the constant decay

    model = TinyFlax()
    torch_model = torch.nn.Module()
    torch_model.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    torch_model.bn = torch.nn.BatchNorm2d(4)
    torch_model.fc = torch.nn.Linear(4, 2)
    tx = optax.sgd(0.3, momentum=0.9)
    state = steps.create_train_state(model, tx, jax.random.key(0), image_size=6, use_ema=True)
    _load_into_torch(torch_model, state.params, state.batch_stats)
    ema = ModelEMA(torch_model, decay=ema_decay, tau=ema_tau)
    train_step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, task=MeanSquaredError(), tx=tx,
                                                       schedule=optax.constant_schedule(0.3), ema_decay=ema_decay,
                                                       ema_tau=ema_tau))
    rng = np.random.default_rng(0)
    worst = 0.0
    for k in range(8):
        batch = {"image": rng.normal(size=(4, 6, 6, 3)).astype(np.float32),
                 "target": rng.normal(size=(4, 2)).astype(np.float32)}
        state, _ = train_step(state, batch)
        _load_into_torch(torch_model, state.params, state.batch_stats)
        ema.update(torch_model)
        mirror = torch.nn.Module()
        mirror.conv, mirror.bn, mirror.fc = (torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                                             torch.nn.Linear(4, 2))
        _load_into_torch(mirror, state.ema_params, state.ema_batch_stats)
        theirs, ours = ema.ema.state_dict(), mirror.state_dict()
        for name, value in theirs.items():
            if value.dtype.is_floating_point:
                diff = float((ours[name] - value).abs().max())
                worst = max(worst, diff)
                assert diff < 1e-6, f"update {k + 1} {name}: {diff:.3g}"
    assert ema.updates == int(state.step) == 8
    print(f"max |ours - ModelEMA| over 8 updates: {worst:.2g}")


def test_yolov8n_coco_config():
    path = Path(__file__).resolve().parents[1] / "configs" / "yolov8n_coco.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.batch_size == config.weight_decay_nominal_batch_size == 64
    assert optim.effective_weight_decay(config) == pytest.approx(5e-4)
    assert optim.peak_learning_rate(config) == 0.01
    schedule = optim.learning_rate_schedule(config, 117_266 // 64)
    assert schedule.warmup_steps == 3 * 1832 and schedule.epochs == 100
    assert float(schedule(100 * 1832 - 1)) == pytest.approx(0.01 * (0.01 + 0.99 / 100))
    # the other recipes keep their decay and schedules
    assert optim.effective_weight_decay(base_config()) == base_config().weight_decay
