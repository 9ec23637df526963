"""MobileNetV4 (timm `mobilenetv4_*`): exact to the real timm modules, strict conversion, timm's feature levels,
folded inference, a train step, the training config, and a family added without touching the engine."""
import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from torch_reference import randomize_, timm, torch, torch_forward

import flax_mobilenet as fm
from flax_mobilenet.convert import ConversionError

ROOT = Path(__file__).resolve().parents[1]
RELATIVE_TOLERANCE = 1e-4
# SPEC section 3 (timm 1.0, 1000 classes); the test also compares against the reference's own count.
PUBLISHED_PARAMS = {
    "mobilenetv4_conv_small": 3_774_024, "mobilenetv4_conv_medium": 9_715_512, "mobilenetv4_conv_large": 32_590_864,
    "mobilenetv4_hybrid_medium": 11_074_648, "mobilenetv4_hybrid_large": 37_764_624,
    "mobilenetv4_conv_small_050": 2_238_952,
}
NAMES = tuple(PUBLISHED_PARAMS)
SQUARE, NON_SQUARE = (97, 97), (75, 113)  # odd sizes: every stride-2 conv sees an odd input somewhere


@functools.cache
def reference(name):
    """Random weights and BN statistics.  Layer scales drawn around 1 (randomize_'s 1-D rule; timm inits them at
    1e-5) double the hybrids' residual stream per block, to ~1e8 at the head, where the 1x1 head conv's cancellation
    turns fp32 rounding into 20% logit errors in PyTorch itself; around 0.1 they stay non-trivial and per channel."""
    model = randomize_(timm.create_model(name), seed=len(name))
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("layer_scale.gamma"):
                tensor.mul_(0.1)
    return model


@functools.cache
def converted(name):
    return fm.convert_state_dict(name, reference(name).state_dict())


def relative_error(ours, expected):
    return float(np.max(np.abs(np.asarray(ours) - expected)) / np.max(np.abs(expected)))


def images(height, width, seed=0):
    return np.random.default_rng(seed).standard_normal((2, height, width, 3), dtype=np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_reference_param_count(name):
    assert name in fm.list_models()
    spec = fm.model_spec(name)
    assert spec.source == "timm" and spec.bn_eps == 1e-5 and spec.head.hidden_norm
    shapes = jax.eval_shape(fm.create_model(name).init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert ours == sum(p.numel() for p in reference(name).parameters()) == PUBLISHED_PARAMS[name]
    cfg = reference(name).pretrained_cfg  # timm's default (first listed) pretrained tag for the name
    weights = fm.weights_info(name)
    assert weights.reference == f"timm {name}.{cfg['tag']}"
    assert (weights.crop_size, weights.interpolation) == (cfg["input_size"][-1], cfg["interpolation"])
    assert weights.resize_size == int(cfg["input_size"][-1] / cfg["crop_pct"])
    assert weights.mean == tuple(cfg["mean"]) and weights.std == tuple(cfg["std"])


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_timm(name, parity_report):
    model = fm.create_model(name)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for height, width in (SQUARE, NON_SQUARE):
        x = images(height, width)
        expected = torch_forward(reference(name), x)
        ours = apply(converted(name), x)
        assert ours.shape == expected.shape == (2, 1000)
        error = relative_error(ours, expected)
        parity_report[f"{name} {height}x{width}"] = error
        assert error <= RELATIVE_TOLERANCE, f"{name} at {height}x{width}: relative error {error:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_stride_taps_match_timm_features_only(name):
    features = timm.create_model(name, features_only=True)
    full = reference(name).state_dict()
    features.load_state_dict({k: full[k] for k in features.state_dict()}, strict=True)
    features.eval()
    reductions = features.feature_info.reduction()
    taps = tuple(f"stride{r}" for r in reductions)
    assert taps == ("stride2", "stride4", "stride8", "stride16", "stride32")
    info = fm.feature_info(name)
    assert [info[t].channels for t in taps] == features.feature_info.channels()
    assert info["stride32"].layer == len(fm.model_spec(name).layers) - 1  # timm's last level: the 1x1 conv to 960
    x = images(*NON_SQUARE, seed=1)
    with torch.inference_mode():
        expected = [t.numpy().transpose(0, 2, 3, 1) for t in features(torch.from_numpy(x.transpose(0, 3, 1, 2)))]
    ours = jax.jit(fm.create_model(name, feature_taps=taps).apply)(converted(name), x)
    assert set(ours) == set(taps)
    for tap, reference_map in zip(taps, expected):
        assert ours[tap].shape == reference_map.shape, tap
        assert relative_error(ours[tap], reference_map) <= RELATIVE_TOLERANCE, tap


def test_missing_key_is_named():
    broken = dict(reference("mobilenetv4_hybrid_medium").state_dict())
    del broken["blocks.2.4.attn.key.down_conv.weight"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  blocks.2.4.attn.key.down_conv.weight"):
        fm.convert_state_dict("mobilenetv4_hybrid_medium", broken)


def test_mis_shaped_key_names_both_shapes():
    broken = dict(reference("mobilenetv4_conv_small").state_dict())
    broken["blocks.2.0.dw_start.conv.weight"] = torch.zeros(64, 1, 3, 3)
    with pytest.raises(ConversionError, match=r"blocks.2.0.dw_start.conv.weight: checkpoint has \(64, 1, 3, 3\), "
                                              r"mobilenetv4_conv_small expects \(64, 1, 5, 5\)"):
        fm.convert_state_dict("mobilenetv4_conv_small", broken)


@pytest.mark.parametrize("given,asked", [("mobilenetv4_conv_small", "mobilenetv4_conv_small_050"),
                                         ("mobilenetv4_hybrid_medium", "mobilenetv4_conv_medium")])
def test_wrong_model_is_recognised(given, asked):
    with pytest.raises(ConversionError, match=f"this looks like a {given} checkpoint") as error:
        fm.convert_state_dict(asked, reference(given).state_dict())
    assert "missing keys" not in str(error.value)


def test_compiled_folded_hybrid_equals_apply():
    """BN folded into every conv (the key/value downsampling included); the attention pre-norm stays a BN."""
    name, size = "mobilenetv4_hybrid_medium", (64, 80)
    model, variables = fm.create_model(name), converted(name)
    x = images(*size, seed=2)
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
        predict = fm.compile_inference(name, variables, batch_size=2, image_size=size)
        ours = np.asarray(predict(x))
    attention = next(f"features_{i}" for i, layer in enumerate(fm.model_spec(name).layers)
                     if type(layer.block).__name__ == "MobileAttentionSpec")
    folded = fm.fold_batchnorm(variables, 1e-5)
    assert set(folded["batch_stats"][attention]) == {"norm"}  # the MQA block's pre-norm, unfolded
    assert set(folded["params"][attention]["attn"]["key_down"]) == {"conv"}
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()


def test_train_step_with_slices_and_both_depthwise_forms_agree():
    name = "mobilenetv4_conv_small"
    variables, x = converted(name), images(64, 64, seed=3)
    slices = fm.create_model(name, depthwise_impl="slices")
    lax_form = fm.create_model(name, depthwise_impl="lax")
    logits = jax.jit(lambda v, x: slices.apply(v, x, train=False))(variables, x)
    assert relative_error(logits, np.asarray(jax.jit(lambda v, x: lax_form.apply(v, x))(variables, x))) <= 1e-5

    labels = jnp.array([1, 7])

    def loss_fn(params, batch_stats):
        logits, updates = slices.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                       mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], variables["batch_stats"])
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    assert np.any(updates["batch_stats"]["features_0"]["bn"]["mean"] != variables["batch_stats"]["features_0"]["bn"]["mean"])


def test_config_names_a_registered_model():
    path = ROOT / "configs" / "mobilenetv4_conv_small.py"
    module_spec = importlib.util.spec_from_file_location("mobilenetv4_conv_small_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config()
    assert config.model.name in fm.list_models()
    assert config.image_size == fm.weights_info(config.model.name).crop_size
    fm.create_model(config.model.name, num_classes=config.model.num_classes, dropout=config.model.dropout)


def test_family_touches_no_engine_file():
    """MNV4 is only a family file plus its block kinds and layer: the generic builder, spec, registry, converter
    and BN folding know nothing of it."""
    kinds = {type(layer.block).__module__ for name in NAMES for layer in fm.model_spec(name).layers}
    assert kinds == {f"flax_mobilenet.blocks.{m}" for m in ("conv_norm_act", "fused_ib", "universal_ir",
                                                           "mobile_attention")}
    package = ROOT / "flax_mobilenet"
    engine = [package / "registry.py", package / "backbones" / "builder.py", package / "backbones" / "spec.py",
              package / "inference" / "fold.py", *sorted((package / "convert").glob("*.py"))]
    for path in engine:
        source = path.read_text().lower()
        for word in ("mobilenetv4_", "mobilenet_v4", "universal_ir", "fused_ib", "mobile_attention",
                     "multiqueryattention"):
            assert word not in source, f"{path.name} mentions {word}"
