"""Blocks and model behaviour that need no reference framework."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flax_mobilenet as fm
from flax_mobilenet.layers import DepthwiseConv, depthwise_conv_lax, depthwise_conv_slices, make_divisible


@pytest.mark.parametrize("kernel,stride,dilation,size", [(3, 1, 1, (13, 17)), (3, 2, 1, (14, 15)),
                                                         (5, 2, 1, (15, 16)), (5, 1, 2, (12, 13)),
                                                         (3, 1, 2, (9, 9))])
def test_depthwise_forms_agree_in_value_and_gradient(kernel, stride, dilation, size):
    rng = np.random.default_rng(kernel * 10 + stride + dilation)
    x = jnp.asarray(rng.standard_normal((2, *size, 8), dtype=np.float32))
    outputs = {}
    for impl in ("slices", "lax"):
        module = DepthwiseConv(kernel, stride, dilation, impl=impl)
        variables = module.init(jax.random.key(0), x)

        def loss(variables, x):
            y = module.apply(variables, x)
            return jnp.sum(jnp.sin(y)), y

        (value, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables, x)
        outputs[impl] = (y, grads)
    (y_slices, g_slices), (y_lax, g_lax) = outputs["slices"], outputs["lax"]
    assert y_slices.shape == y_lax.shape
    np.testing.assert_allclose(y_slices, y_lax, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_slices), jax.tree.leaves(g_lax)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bilinear_resize_primitive_jits_vmaps_and_differentiates():
    """heads.resize_bilinear is one primitive (the ONNX export lowers it to Resize): under jit, vmap, jvp and
    grad it is the upsampling jax.image.resize computes (which agrees with torch's when upsampling)."""
    from flax_mobilenet.heads import resize_bilinear

    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    ours = lambda x: resize_bilinear(x, (11, 13))  # noqa: E731
    reference = lambda x: jax.image.resize(x, (x.shape[0], 11, 13, 3), "bilinear")  # noqa: E731
    np.testing.assert_allclose(jax.jit(ours)(x), reference(x), atol=1e-5)
    np.testing.assert_allclose(jax.vmap(ours)(x[:, None])[:, 0], ours(x), atol=1e-6)
    np.testing.assert_allclose(jax.jvp(ours, (x,), (2 * x,))[1], 2 * ours(x), atol=1e-5)
    loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)) * jnp.arange(13.0)[:, None])  # noqa: E731
    np.testing.assert_allclose(jax.grad(loss(ours))(x), jax.grad(loss(reference))(x), atol=1e-4)
    assert resize_bilinear(x, (5, 7)) is x  # the same size: no op at all


def test_depthwise_impl_choice_is_validated():
    with pytest.raises(ValueError, match="depthwise_impl must be one of"):
        jax.eval_shape(fm.create_model("mobilenet_v3_small", depthwise_impl="cudnn").init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))


def test_make_divisible_matches_torchvision_rounding():
    assert [make_divisible(v) for v in (32 * 0.35, 16 * 0.35, 1280 * 1.4, 72 * 0.75, 3.9)] == [16, 8, 1792, 56, 8]
    assert make_divisible(17, 8) == 16 and make_divisible(13, 8) == 16


def _train_step_and_forward_flops(name: str, batch: int = 4, size: int = 128):
    model = fm.create_model(name, num_classes=10)
    x = jnp.zeros((batch, size, size, 3))
    labels = jnp.zeros((batch,), jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    optimizer = optax.sgd(0.1, momentum=0.9)
    opt_state = optimizer.init(variables["params"])

    def train_step(params, batch_stats, opt_state, x, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                          rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        step, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, step), updates["batch_stats"], opt_state, loss

    def forward(variables, x):
        return model.apply(variables, x, train=False)

    def flops(fn, *args):
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return cost["flops"]

    return (flops(train_step, variables["params"], variables["batch_stats"], opt_state, x, labels),
            flops(forward, variables, x))


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])  # 3x3 and 5x5, strides 1 and 2
def test_train_step_has_no_dense_depthwise_gradient(name):
    """A grouped conv's weight gradient lowers to a dense [C,k,k,C] conv on XLA:CPU (5x+ the forward)."""
    train_flops, forward_flops = _train_step_and_forward_flops(name)
    ratio = train_flops / forward_flops
    assert 2.0 < ratio < 4.0, f"{name}: train step costs {ratio:.1f}x the forward"


def test_train_mode_updates_batch_stats_and_uses_dropout():
    model = fm.create_model("mobilenet_v3_small", num_classes=5, dropout=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 48, 48, 3), dtype=np.float32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    train = jax.jit(lambda v, x, rng: model.apply(v, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]))
    logits_a, updates = train(variables, x, jax.random.key(1))
    logits_b, _ = train(variables, x, jax.random.key(2))
    assert not np.allclose(logits_a, logits_b)  # different dropout masks
    before = variables["batch_stats"]["features_0"]["bn"]["mean"]
    after = updates["batch_stats"]["features_0"]["bn"]["mean"]
    assert not np.allclose(before, after)
    eval_default, eval_explicit = jax.jit(model.apply)(variables, x), jax.jit(
        lambda v, x: model.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(eval_default, eval_explicit)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)


def test_bfloat16_compute_keeps_float32_params():
    model = fm.create_model("mobilenet_v2", width_mult=0.5, dtype=jnp.bfloat16)
    reference = fm.create_model("mobilenet_v2", width_mult=0.5)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3), dtype=np.float32))
    variables = jax.jit(reference.init)(jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), x)))
    low, high = jax.jit(model.apply)(variables, x), jax.jit(reference.apply)(variables, x)
    assert low.dtype == jnp.float32 and low.shape == (2, 1000)
    assert np.abs(low - high).max() < 0.1 * np.abs(high).max()


def test_num_classes_none_returns_pooled_features():
    for name, width in (("mobilenet_v3_large", 1280), ("mobilenet_v2", 1280), ("mobilenet_v1", 1024)):
        model = fm.create_model(name, num_classes=None)
        variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        assert "classifier" not in variables["params"]
        assert jax.eval_shape(model.apply, variables, jnp.zeros((3, 40, 33, 3))).shape == (3, width)
        assert fm.model_spec(name).num_features == width


@pytest.mark.parametrize("shape,message", [
    ((224, 224, 3), "expected a batch of NHWC images"),
    ((1, 3, 224, 224), "this looks like NCHW"),
    ((1, 16, 224, 3), "at least 32x32"),
])
def test_bad_input_shapes_are_named(shape, message):
    model = fm.create_model("mobilenet_v3_small")
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


def test_integer_images_are_refused():
    with pytest.raises(ValueError, match="float images"):
        jax.eval_shape(fm.create_model("mobilenet_v3_small").init, jax.random.key(0),
                       jnp.zeros((1, 64, 64, 3), jnp.uint8))


def test_unknown_model_and_option_are_named():
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v4'.*did you mean"):
        fm.create_model("mobilenet_v4")
    with pytest.raises(TypeError, match="mobilenet_v2 does not take reduced_tail"):
        fm.create_model("mobilenet_v2", reduced_tail=True)
    with pytest.raises(ValueError, match="timm's fixed width_mult=1.0 model.*use mobilenet_v2"):
        fm.create_model("mobilenetv2_100", width_mult=0.5)
    with pytest.raises(ValueError, match="widths timm publishes are separate names"):
        fm.create_model("mobilenetv4_conv_small", width_mult=0.5)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small", "shufflenet_v2_x0_5", "mobilenetv4_conv_small",
                                  "mobilenetv4_hybrid_medium", "mobilevit_xxs"])
def test_slices_form_reaches_every_depthwise_conv_forward_and_backward(name):
    """With depthwise_impl='slices' no grouped convolution is left in the train step of any block kind."""
    model = fm.create_model(name, num_classes=10, depthwise_impl="slices")
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss(params, others):
        logits, _ = model.apply({**others, "params": params}, x, train=True, rngs={"dropout": jax.random.key(1)},
                                mutable=["batch_stats"])
        return jnp.sum(logits)

    others = {k: v for k, v in variables.items() if k != "params"}
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables["params"], others))
    groups = [int(g) for g in re.findall(r"(?:feature|batch)_group_count=(\d+)", jaxpr)]
    assert groups and all(g == 1 for g in groups), f"{name}: grouped convolutions {sorted(set(groups))}"
    lax_jaxpr = str(jax.make_jaxpr(fm.create_model(name, num_classes=10, depthwise_impl="lax").apply)(variables, x))
    assert any(int(g) > 1 for g in re.findall(r"feature_group_count=(\d+)", lax_jaxpr))  # the check can fail
