"""Optimizers, schedules, losses and the train/eval steps, checked against PyTorch's definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_mobilenet as fm
from flax_mobilenet import create_model
from flax_mobilenet.training import optim, steps, tasks
from flax_mobilenet.training.checkpoints import merge_backbone, merge_pretrained
from flax_mobilenet.training.defaults import base_config, torchvision_v2_recipe, torchvision_v3_recipe
# PyTorch only inside the tests marked `torch` (imported there: the Python 3.13 CI leg has none; conftest.py).


def _torch_run(recipe, params, grads_per_step, steps_per_epoch):
    """torchvision's train.py optimizer + StepLR, stepping the scheduler once per epoch."""
    from torch_reference import torch  # fails loudly when PyTorch is missing (CI installs it)

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = recipe.optimizer
    lr = optim.peak_learning_rate(recipe)
    if opt.name == "rmsprop":
        optimizer = torch.optim.RMSprop(tensors.values(), lr=lr, alpha=opt.decay, eps=opt.eps,
                                        momentum=opt.momentum, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(tensors.values(), lr=lr, momentum=opt.momentum,
                                    weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(recipe.lr_schedule.decay_epochs),
                                                gamma=recipe.lr_schedule.decay_rate)
    for i, grads in enumerate(grads_per_step):
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        optimizer.step()
        if (i + 1) % steps_per_epoch == 0:
            scheduler.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.torch
@pytest.mark.parametrize("recipe_fn", [torchvision_v3_recipe, torchvision_v2_recipe], ids=["rmsprop", "sgd"])
def test_optimizer_and_schedule_match_torch(recipe_fn):
    config = recipe_fn(base_config())
    config.batch_size = 512  # lr scales linearly: half the recipe's batch (V3) / twice (V2)
    config.learning_rate = 3.0  # large, so that any mismatch in the update rule shows
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32), "bias": rng.normal(size=(4,)).astype(np.float32)}
    steps_per_epoch = 2
    grads_per_step = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(9)]

    schedule = optim.learning_rate_schedule(config, steps_per_epoch)
    tx = optim.create_optimizer(config, schedule, params)
    ours, opt_state = dict(params), tx.init(params)
    for grads in grads_per_step:
        updates, opt_state = tx.update(grads, opt_state, ours)
        ours = jax.tree.map(lambda p, u: p + u, ours, updates)

    reference = _torch_run(config, params, grads_per_step, steps_per_epoch)
    for key in params:
        np.testing.assert_allclose(np.asarray(ours[key]), reference[key], rtol=2e-5, atol=2e-6)
    # lr is constant within an epoch and decays at epoch boundaries (StepLR semantics)
    assert float(schedule(0)) == float(schedule(steps_per_epoch - 1)) == pytest.approx(optim.peak_learning_rate(config))


def test_weight_decay_can_skip_batchnorm_and_biases():
    params = {"conv": {"kernel": jnp.ones((1, 1, 2, 2))}, "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    assert optim.decay_mask(params, skip_bn_and_bias=True) == {"conv": {"kernel": True},
                                                               "bn": {"scale": False, "bias": False}}
    assert all(jax.tree.leaves(optim.decay_mask(params, skip_bn_and_bias=False)))


def test_warmup_then_cosine():
    config = base_config()
    config.num_epochs, config.learning_rate, config.base_batch_size = 4, 0.5, 0
    config.lr_schedule.update(name="cosine", warmup_epochs=1.0)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(0.5)
    assert float(schedule(40)) == pytest.approx(0.0, abs=1e-7)
    assert 0.0 < float(schedule(25)) < 0.5


def test_unknown_optimizer_is_named():
    config = base_config()
    config.optimizer.name = "lamb"
    with pytest.raises(ValueError, match="lamb"):
        optim.create_optimizer(config, optim.learning_rate_schedule(config, 1), {"w": jnp.ones(2)})


@pytest.mark.torch
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(smoothing):
    from torch_reference import torch  # fails loudly when PyTorch is missing (CI installs it)

    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(6, 10)).astype(np.float32), rng.integers(0, 10, 6)
    ours = float(jnp.mean(tasks.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)))
    reference = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels),
                                                  label_smoothing=smoothing).item()
    assert ours == pytest.approx(reference, rel=1e-5)


def test_train_step_learns_and_eval_counts_only_real_examples():
    config = base_config()
    config.optimizer.name, config.learning_rate, config.base_batch_size = "adamw", 3e-3, 0
    config.ema_decay = 0.5
    model = create_model("mobilenet_v3_small", num_classes=4, width_mult=0.5)
    schedule = optim.learning_rate_schedule(config, 10)
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(np.arange(8) % 4, jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    tx = optim.create_optimizer(config, schedule, params)
    state = jax.jit(lambda key: steps.create_train_state(model, tx, key, 32, use_ema=True))(jax.random.key(0))
    task = tasks.Classification()
    step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, task=task, tx=tx, schedule=schedule,
                                                 ema_decay=0.5))
    losses = []
    for _ in range(15):
        state, metrics = step(state, {"image": images, "label": labels})
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 15 and int(metrics["nonfinite"]) == 0
    assert losses[-1] < 0.5 * losses[0], losses
    # EMA moved towards the params but is not equal to them
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0])  # noqa: E731
    assert not np.allclose(leaf(state.ema_params), leaf(state.params))

    mask = jnp.asarray([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    sums = jax.jit(lambda p, b, batch: steps.eval_step(p, b, batch, model=model, task=task))(
        state.params, state.batch_stats, {"image": images, "label": labels, "mask": mask})
    assert float(sums["count"]) == 5.0
    assert 0.0 <= float(sums["top1"]) <= float(sums["top5"]) <= 5.0


def test_frozen_layers_keep_their_weights_and_skip_their_backward_pass():
    """frozen_layers=N: features_0..N-1 unchanged (weight decay included) while their BatchNorm statistics
    move; the trained layers get the full model's gradients; the step computes less (no backward there)."""
    config = base_config()
    config.optimizer.name, config.learning_rate, config.base_batch_size = "sgd", 0.1, 0  # update: -lr (g + wd p)
    config.weight_decay = 0.1
    model = create_model("mobilenet_v1", num_classes=4, width_mult=0.25)
    schedule = optim.learning_rate_schedule(config, 10)
    rng = np.random.default_rng(3)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32),
             "label": jnp.asarray([0, 1, 2, 3], jnp.int32)}
    task = tasks.Classification()
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch["image"])["params"]

    def one_step(frozen_layers):
        config.frozen_layers = frozen_layers
        tx = optim.create_optimizer(config, schedule, shapes)
        frozen = optim.frozen_modules(shapes, frozen_layers)
        state = steps.create_train_state(model, tx, jax.random.key(0), 32, use_ema=False)
        step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, task=task, tx=tx, schedule=schedule,
                                                     ema_decay=0.0, frozen=frozen))
        compiled = step.lower(state, batch).compile()
        return state, compiled(state, batch), compiled.cost_analysis()["flops"]

    start, (full, full_metrics), full_flops = one_step(0)
    _, (part, part_metrics), part_flops = one_step(3)

    def changed(a, b):
        return not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    for i in range(3):
        name = f"features_{i}"
        assert not changed(part.params[name], start.params[name]), name
        assert changed(part.batch_stats[name], start.batch_stats[name]), name
    for name in ("features_3", "features_13", "classifier"):
        assert changed(part.params[name], start.params[name]), name
        for a, b in zip(jax.tree.leaves(part.params[name]), jax.tree.leaves(full.params[name])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert float(part_metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), rel=1e-6)
    assert part_flops < 0.95 * full_flops, (part_flops, full_flops)  # measured: 0.88
    with pytest.raises(ValueError, match="frozen_layers=15 must be an integer from 0 to the model.s 14 layers"):
        optim.frozen_modules(shapes, 15)


def test_merge_pretrained_replaces_only_the_head():
    fresh = {"params": {"features_0": {"w": np.zeros((3, 3))}, "classifier": {"kernel": np.zeros((4, 10))}}}
    loaded = {"params": {"features_0": {"w": np.ones((3, 3))}, "classifier": {"kernel": np.ones((4, 1000))}}}
    merged, kept = merge_pretrained(fresh, loaded)
    assert kept == ["params/classifier/kernel"]
    assert merged["params"]["features_0"]["w"].sum() == 9 and merged["params"]["classifier"]["kernel"].sum() == 0
    loaded["params"]["features_0"]["w"] = np.ones((3, 4))
    with pytest.raises(ValueError, match="features_0/w"):
        merge_pretrained(fresh, loaded)
    del loaded["params"]["features_0"]
    with pytest.raises(ValueError, match="missing params/features_0/w"):
        merge_pretrained(fresh, loaded)


def test_merge_backbone_loads_the_feature_layers_and_keeps_the_heads_fresh():
    fresh = {"params": {"features_0": {"w": np.zeros((3, 3))}, "features_1": {"w": np.zeros(2)},
                        "features_19": {"w": np.zeros(4)}, "head": {"kernel": np.zeros((4, 6))}}}
    classifier = {"params": {"features_0": {"w": np.ones((3, 3))}, "features_1": {"w": np.ones(2)},
                             "pre_logits": {"kernel": np.ones((4, 8))}, "classifier": {"kernel": np.ones((8, 1000))}}}
    merged, fresh_modules = merge_backbone(fresh, classifier)
    assert fresh_modules == ["features_19", "head"]
    assert merged["params"]["features_0"]["w"].sum() == 9 and merged["params"]["features_1"]["w"].sum() == 2
    assert merged["params"]["head"]["kernel"].sum() == 0 and merged["params"]["features_19"]["w"].sum() == 0
    classifier["params"]["features_1"]["w"] = np.ones(3)  # another width
    with pytest.raises(ValueError, match=r"features_1/w: checkpoint \(3,\) vs model \(2,\)"):
        merge_backbone(fresh, classifier)
    classifier["params"]["features_1"]["w"] = np.ones(2)
    classifier["params"]["features_7"] = {"w": np.ones(2)}  # a deeper backbone than the model's
    with pytest.raises(ValueError, match="unexpected params/features_7/w"):
        merge_backbone(fresh, classifier)


def test_best_checkpoint_is_the_best_eval_not_the_latest(tmp_path):
    """orbax answers best_step() with the latest step unless told how to rank: the best must really be tracked."""
    from flax_mobilenet.training.checkpoints import TrainingCheckpoints, read_pretrained

    checkpoints = TrainingCheckpoints(tmp_path, keep=1, async_save=False)
    for step, top1 in ((400, 0.9972), (440, 0.9944)):
        state = {"params": {"w": np.full(2, step, np.float32)}, "batch_stats": {}}
        checkpoints.save(step, state, {"eval_top1": top1})
    checkpoints.wait()
    assert (checkpoints.best_step(), checkpoints.latest_step()) == (400, 440)
    assert checkpoints.best_metric() == ("eval_top1", pytest.approx(0.9972))
    checkpoints.close()
    (tmp_path / "model.json").write_text('{"model": "mobilenet_v3_small", "num_classes": 10}')
    best = read_pretrained(str(tmp_path))  # init_from=<workdir> starts from the best step
    np.testing.assert_array_equal(best.variables["params"]["w"], [400, 400])
    assert best.metadata["num_classes"] == 10 and "step 400 (best eval_top1 0.9972)" in best.description
    # predict.py / export.py: the best, a step asked for, or a step folder; a step not kept is named
    assert fm.load_variables(tmp_path)["params"]["w"][0] == 400
    assert fm.load_variables(tmp_path, step=440)["params"]["w"][0] == 440
    step_folder = fm.open_checkpoint(tmp_path / "checkpoints" / "440")
    assert step_folder.variables["params"]["w"][0] == 440 and step_folder.metadata["model"] == "mobilenet_v3_small"
    with pytest.raises(ValueError, match="step 7 is not kept in .*; kept steps: 400, 440"):
        fm.load_variables(tmp_path, step=7)
    with pytest.raises(ValueError, match="is step 440 of a training run, but step 400 was asked for"):
        fm.load_variables(tmp_path / "checkpoints" / "440", step=400)
