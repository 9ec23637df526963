"""ShuffleNetV2 (torchvision shufflenet_v2_x0_5 .. x2_0): registry, parity, conversion, taps, inference,
training and config, all against the real torchvision modules."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from torch_reference import randomize_, torch, torch_forward, tv_models

import flax_mobilenet as fm
from flax_mobilenet.blocks.pooling import max_pool
from flax_mobilenet.convert import ConversionError

NAMES = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0")
PUBLISHED_PARAMS = dict(zip(NAMES, (1_366_792, 2_278_604, 3_503_624, 7_393_996)))  # SPEC section 3
WEIGHTS = {name: getattr(tv_models, f"ShuffleNet_V2_{name[-4:].upper()}_Weights").IMAGENET1K_V1 for name in NAMES}
RELATIVE_TOLERANCE = 1e-4
INPUT_SIZES = [(97, 97), (75, 113)]  # square and non-square, odd
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shufflenet_v2.py"


def relative_error(ours, reference):
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def references():
    return {name: randomize_(getattr(tv_models, name)(), seed=index) for index, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def converted(references):
    return {name: fm.convert_state_dict(name, reference.state_dict()) for name, reference in references.items()}


@pytest.fixture(scope="module")
def state_dict(references):
    return {k: v.clone() for k, v in references["shufflenet_v2_x0_5"].state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_reference_params_and_weights_info(name, references):
    assert name in fm.list_models()
    spec = fm.model_spec(name)
    assert spec.source == "torchvision" and spec.bn_eps == 1e-5 and spec.bn_momentum == 0.1
    shapes = jax.eval_shape(fm.create_model(name).init, jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert ours == sum(p.numel() for p in references[name].parameters()) == PUBLISHED_PARAMS[name]
    assert ours == WEIGHTS[name].meta["num_params"]
    transform, info = WEIGHTS[name].transforms(), fm.weights_info(name)
    assert (info.resize_size, info.crop_size) == (transform.resize_size[0], transform.crop_size[0])
    assert info.interpolation == transform.interpolation.value
    assert (list(info.mean), list(info.std)) == (transform.mean, transform.std)


def test_width_is_the_name_not_an_override():
    with pytest.raises(TypeError, match="shufflenet_v2_x1_0 does not take width_mult"):
        fm.create_model("shufflenet_v2_x1_0", width_mult=2.0)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_reference(name, references, converted, parity_report):
    model = fm.create_model(name)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    rng = np.random.default_rng(0)
    for height, width in INPUT_SIZES:
        images = rng.standard_normal((2, height, width, 3), dtype=np.float32)
        expected = torch_forward(references[name], images)
        ours = np.asarray(apply(converted[name], images))
        assert ours.shape == expected.shape == (2, 1000)
        error = relative_error(ours, expected)
        parity_report[f"{name} {height}x{width}"] = error
        assert error <= RELATIVE_TOLERANCE, f"{name} at {height}x{width}: relative error {error:.2e}"


def test_feature_taps_match_torchvision_module_outputs(references, converted):
    """stride2 = conv1, stride4 = maxpool, stride8/16 = end of stage2/3, stride32 = conv5 (after stage4)."""
    name, reference = "shufflenet_v2_x1_0", references["shufflenet_v2_x1_0"]
    modules = dict(stride2="conv1", stride4="maxpool", stride8="stage2", stride16="stage3", stride32="conv5")
    taps = (*modules, "features.17")  # features.17 = stage4's last unit
    outputs = {}
    hooks = [getattr(reference, module).register_forward_hook(
        lambda _, __, out, module=module: outputs.__setitem__(module, out.numpy().transpose(0, 2, 3, 1)))
        for module in (*modules.values(), "stage4")]
    images = np.random.default_rng(1).standard_normal((2, 97, 129, 3), dtype=np.float32)
    torch_forward(reference, images)
    for hook in hooks:
        hook.remove()
    ours = jax.jit(fm.create_model(name, feature_taps=taps).apply)(converted[name], images)
    info = fm.feature_info(name)
    assert set(ours) == set(taps)
    for tap, module in (*modules.items(), ("features.17", "stage4")):
        assert ours[tap].shape == outputs[module].shape, tap
        assert ours[tap].shape[-1] == info[tap].channels, tap
        assert relative_error(ours[tap], outputs[module]) <= RELATIVE_TOLERANCE, tap
    assert [info[f"stride{s}"].layer for s in (2, 4, 8, 16, 32)] == [0, 1, 5, 13, 18]


@pytest.mark.parametrize("height,width", [(9, 9), (8, 11)])
def test_max_pool_pads_with_minus_infinity_as_torch(height, width):
    images = -1.0 - np.random.default_rng(2).random((2, height, width, 5), dtype=np.float32)  # all negative
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), 3, 2, 1)
    ours = np.asarray(max_pool(jnp.asarray(images), 3, 2))
    np.testing.assert_array_equal(ours, expected.numpy().transpose(0, 2, 3, 1))


def test_missing_key_is_named(state_dict):
    broken = dict(state_dict)
    del broken["stage3.0.branch1.2.weight"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  stage3.0.branch1.2.weight"):
        fm.convert_state_dict("shufflenet_v2_x0_5", broken)


def test_wrong_shape_names_both_shapes(state_dict):
    broken = dict(state_dict, **{"stage2.1.branch2.3.weight": torch.zeros(24, 1, 5, 5)})
    with pytest.raises(ConversionError, match=r"stage2.1.branch2.3.weight: checkpoint has \(24, 1, 5, 5\), "
                                              r"shufflenet_v2_x0_5 expects \(24, 1, 3, 3\)"):
        fm.convert_state_dict("shufflenet_v2_x0_5", broken)


def test_unexpected_key_is_named(state_dict):
    broken = dict(state_dict, **{"stage5.0.branch2.0.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"1 unexpected keys:\n  stage5.0.branch2.0.weight"):
        fm.convert_state_dict("shufflenet_v2_x0_5", broken)


def test_wrong_model_is_recognised(state_dict, references):
    with pytest.raises(ConversionError, match="this looks like a shufflenet_v2_x0_5 checkpoint") as error:
        fm.convert_state_dict("shufflenet_v2_x1_0", state_dict)
    assert "missing keys" not in str(error.value)
    with pytest.raises(ConversionError, match="this looks like a shufflenet_v2_x2_0 checkpoint"):
        fm.convert_state_dict("mobilenet_v2", references["shufflenet_v2_x2_0"].state_dict())


def test_wrong_num_classes_gets_a_hint(state_dict):
    with pytest.raises(ConversionError, match="its classifier has 1000 classes, not num_classes=10"):
        fm.convert_state_dict("shufflenet_v2_x0_5", state_dict, num_classes=10)


def test_compiled_folded_model_equals_model_apply(converted):
    name = "shufflenet_v2_x0_5"
    model, variables = fm.create_model(name), converted[name]
    images = np.random.default_rng(3).standard_normal((2, 75, 113, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):  # GPUs default to TF32, which rounds the two forms apart
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
        ours = np.asarray(fm.compile_inference(name, variables, batch_size=2, image_size=(75, 113))(images))
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()
    folded = fm.fold_batchnorm(variables, 1e-5)
    assert "batch_stats" not in folded  # every BatchNorm of ShuffleNetV2 follows a conv


def test_train_step_matches_torch_train_mode_and_has_finite_grads(references, converted):
    """value_and_grad with train=True (batch statistics, depthwise as slices): logits equal torch's train mode."""
    name = "shufflenet_v2_x0_5"
    model, variables = fm.create_model(name, depthwise_impl="slices"), converted[name]
    images = np.random.default_rng(4).standard_normal((2, 64, 80, 3), dtype=np.float32)
    labels = np.array([3, 7])

    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                                      train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, new_stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
    reference = getattr(tv_models, name)()
    reference.load_state_dict(references[name].state_dict())
    reference.train()
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).detach().numpy()
    assert relative_error(logits, expected) <= RELATIVE_TOLERANCE
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["features_2"]["branch1_depthwise"]["conv"]["kernel"]).max()) > 0
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_stats, variables["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_depthwise_slices_and_lax_give_equal_logits(converted):
    name = "shufflenet_v2_x0_5"
    images = np.random.default_rng(5).standard_normal((2, 75, 113, 3), dtype=np.float32)
    logits = {impl: np.asarray(jax.jit(fm.create_model(name, depthwise_impl=impl).apply)(converted[name], images))
              for impl in ("slices", "lax")}
    assert relative_error(logits["slices"], logits["lax"]) <= 1e-5


def test_config_names_a_registered_model_and_the_published_recipe():
    spec = importlib.util.spec_from_file_location(CONFIG.stem, CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.name == "shufflenet_v2_x1_0" and config.model.name in fm.list_models()
    assert (config.batch_size, config.learning_rate, config.num_epochs, config.weight_decay) == (1024, 0.5, 600, 2e-5)
    assert config.lr_schedule.name == "cosine" and config.lr_schedule.warmup_epochs == 5
    options = {k: v for k, v in config.model.items() if k != "name"}
    model = fm.create_model(config.model.name, **options)
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    assert shapes["params"]["classifier"]["kernel"].shape == (1024, config.model.num_classes)
