"""MobileViT v1 (timm mobilevit_xxs|xs|s) and v2 (mobilevitv2_050.._200): parity with timm, conversion,
feature taps, inference, training."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from torch_reference import randomize_, timm, torch, torch_forward

import flax_mobilenet as fm
from flax_mobilenet.blocks.mobilevit_block import resize_bilinear, resize_bilinear_align_corners
from flax_mobilenet.convert import ConversionError

V1_NAMES = ("mobilevit_xxs", "mobilevit_xs", "mobilevit_s")
NAMES = V1_NAMES + tuple(f"mobilevitv2_{m}" for m in ("050", "075", "100", "125", "150", "175", "200"))
PUBLISHED_PARAMS = {"mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632}  # SPEC.md
RELATIVE_TOLERANCE = 1e-4
# Odd sizes put maps that are not multiples of the 2x2 patch in front of every MobileViT block (timm resizes them).
INPUT_SIZES = [(97, 97), (75, 113)]
ROOT = Path(__file__).resolve().parents[1]


def first_mobilevit_block(name):
    """Flax name of the model's first MobileViT block (a layer whose block has a transformer)."""
    return next(f"features_{i}" for i, layer in enumerate(fm.model_spec(name).layers)
                if hasattr(layer.block, "transformer_dim"))


def relative_error(ours, reference):
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def references():
    return {name: randomize_(timm.create_model(name), seed=i) for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def converted(references):
    return {name: fm.convert_state_dict(name, reference.state_dict()) for name, reference in references.items()}


@pytest.fixture(scope="module")
def applies():
    """One jitted eval apply per name, shared by the tests so each shape compiles once."""
    return {name: jax.jit(lambda v, x, model=fm.create_model(name): model.apply(v, x, train=False)) for name in NAMES}


def test_names_registered_and_param_counts_equal_timm(references):
    assert set(NAMES) <= set(fm.list_models())
    for name in NAMES:
        shapes = jax.eval_shape(fm.create_model(name).init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
        ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
        assert ours == sum(p.numel() for p in references[name].parameters()), name
        assert name not in PUBLISHED_PARAMS or ours == PUBLISHED_PARAMS[name], name
        assert fm.model_spec(name).source == "timm"


def test_weights_info_is_timms_pretrained_cfg(references):
    for name in NAMES:
        cfg, info = references[name].pretrained_cfg, fm.weights_info(name)
        assert info.crop_size == cfg["input_size"][-1] == 256 and cfg["crop_pct"] in (0.9, 0.888)
        assert info.resize_size == int(np.floor(cfg["input_size"][-1] / cfg["crop_pct"]))
        assert (info.interpolation, info.mean, info.std) == (cfg["interpolation"], cfg["mean"], cfg["std"])


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_timm(name, references, converted, applies, parity_report):
    rng = np.random.default_rng(0)
    for height, width in INPUT_SIZES:
        images = rng.standard_normal((2, height, width, 3), dtype=np.float32)
        expected = torch_forward(references[name], images)
        ours = np.asarray(applies[name](converted[name], images))
        assert ours.shape == expected.shape == (2, 1000)
        error = relative_error(ours, expected)
        parity_report[f"{name} {height}x{width}"] = error
        assert error <= RELATIVE_TOLERANCE, f"{name} at {height}x{width}: relative error {error:.2e}"


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size,target", [((13, 13), (14, 14)), ((14, 14), (13, 13)), ((5, 15), (6, 16)),
                                         ((6, 16), (5, 15)), ((1, 3), (2, 4)), ((2, 4), (1, 3))])
def test_resize_matches_torch_bilinear(size, target, align_corners):
    x = np.random.default_rng(1).standard_normal((2, *size, 4), dtype=np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), size=target,
                                               mode="bilinear", align_corners=align_corners)
    expected = expected.numpy().transpose(0, 2, 3, 1)
    ours = np.asarray((resize_bilinear_align_corners if align_corners else resize_bilinear)(jnp.asarray(x), *target))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)  # fp32 rounding; a wrong scheme is off by 1e-1


def test_feature_info_equals_timm(references):
    for name in NAMES:
        info = fm.feature_info(name)
        timm_levels = [(f["reduction"], f["num_chs"]) for f in references[name].feature_info]
        ours = sorted((info[k].stride, info[k].channels) for k in info if k.startswith("stride"))
        assert ours == timm_levels, name


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_feature_taps_equal_timm_features_only(name, references, converted):
    features = timm.create_model(name, features_only=True).eval()
    # features_only flattens the stages: 'stages.N.' becomes 'stages_N.'; the head is dropped.
    state = {k.replace("stages.", "stages_", 1): v for k, v in references[name].state_dict().items()
             if not k.startswith("head.")}
    features.load_state_dict(state, strict=True)
    images = np.random.default_rng(2).standard_normal((2, 75, 113, 3), dtype=np.float32)
    with torch.inference_mode():
        expected = [f.numpy().transpose(0, 2, 3, 1) for f in features(torch.from_numpy(images.transpose(0, 3, 1, 2)))]
    taps = tuple(f"stride{f['reduction']}" for f in features.feature_info.get_dicts())
    assert taps == ("stride2", "stride4", "stride8", "stride16", "stride32")
    ours = jax.jit(fm.create_model(name, feature_taps=taps).apply)(converted[name], images)
    for tap, reference_map in zip(taps, expected):
        assert ours[tap].shape == reference_map.shape, tap
        assert relative_error(ours[tap], reference_map) <= RELATIVE_TOLERANCE, tap


def test_conversion_names_a_missing_key(references):
    broken = dict(references["mobilevit_xxs"].state_dict())
    del broken["stages.3.1.transformer.2.attn.qkv.bias"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  stages.3.1.transformer.2.attn.qkv.bias"):
        fm.convert_state_dict("mobilevit_xxs", broken)


def test_conversion_names_a_mis_shaped_key(references):
    broken = dict(references["mobilevit_xxs"].state_dict(), **{"stages.2.1.conv_1x1.weight": torch.zeros(64, 48, 3, 3)})
    with pytest.raises(ConversionError, match=r"stages.2.1.conv_1x1.weight: checkpoint has \(64, 48, 3, 3\), "
                                              r"mobilevit_xxs expects \(64, 48, 1, 1\)"):
        fm.convert_state_dict("mobilevit_xxs", broken)


def test_conversion_recognises_another_mobilevit(references):
    with pytest.raises(ConversionError, match="this looks like a mobilevit_xs checkpoint") as error:
        fm.convert_state_dict("mobilevit_s", references["mobilevit_xs"].state_dict())
    assert "missing keys" not in str(error.value)
    with pytest.raises(ConversionError, match="this looks like a mobilevit_s checkpoint"):
        fm.convert_state_dict("mobilevit_xxs", references["mobilevit_s"].state_dict())
    with pytest.raises(ConversionError, match="this looks like a mobilevitv2_075 checkpoint"):
        fm.convert_state_dict("mobilevitv2_100", references["mobilevitv2_075"].state_dict())


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_compile_inference_equals_apply(name, converted, applies):
    height, width = INPUT_SIZES[1]
    images = np.random.default_rng(0).standard_normal((2, height, width, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(applies[name](converted[name], images))
        predict = fm.compile_inference(name, converted[name], batch_size=2, image_size=(height, width))
        ours = np.asarray(predict(images))
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()
    # BatchNorms are folded away; the Layer/GroupNorms (params only) stay.
    folded, block = fm.fold_batchnorm(converted[name], 1e-5), first_mobilevit_block(name)
    assert "batch_stats" not in folded
    assert set(folded["params"][block]["transformer_0"]["norm1"]) == {"scale", "bias"}
    assert set(folded["params"][block]["conv_proj"]) == {"conv"}


def test_train_step_runs_with_slices_depthwise(converted):
    name = "mobilevit_xxs"
    variables = converted[name]
    images = np.random.default_rng(3).standard_normal((2, 64, 64, 3), dtype=np.float32)
    labels = np.array([3, 7])
    model = fm.create_model(name, depthwise_impl="slices")

    def loss_fn(params, batch_stats):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"],
                                                                                  variables["batch_stats"])
    assert np.isfinite(float(loss))
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(variables["params"]))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    block = first_mobilevit_block(name)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[block]["transformer_0"]["attn"]))
    stats = updates["batch_stats"][block]["conv_proj"]["bn"]["mean"]
    assert not np.allclose(stats, variables["batch_stats"][block]["conv_proj"]["bn"]["mean"])


def test_depthwise_forms_agree(converted):
    name = "mobilevitv2_050"  # depthwise convs in the bottle blocks and in every MobileViT-v2 block
    images = np.random.default_rng(4).standard_normal((2, 64, 64, 3), dtype=np.float32)
    logits = {}
    for impl in ("slices", "lax"):
        model = fm.create_model(name, depthwise_impl=impl)
        logits[impl] = np.asarray(jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(converted[name], images))
    assert relative_error(logits["slices"], logits["lax"]) <= 1e-5


def test_config_names_a_registered_model():
    path = ROOT / "configs" / "mobilevit_s.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.name in fm.list_models()
    assert (config.optimizer.name, config.lr_schedule.name, config.num_epochs) == ("adamw", "cosine", 300)
    options = {k: v for k, v in config.model.items() if k != "name"}
    shapes = jax.eval_shape(fm.create_model(config.model.name, **options).init, jax.random.key(0),
                            np.zeros((1, config.image_size, config.image_size, 3), np.float32))
    assert shapes["params"]["classifier"]["kernel"].shape == (640, config.model.num_classes)
