"""Each YOLO block kind against its real PyTorch module (ultralytics 8.4, yolov5 7.0, the seeds' modules).

Randomized weights and BatchNorm statistics, eval mode, fp32, NHWC vs NCHW; weights go through the spec's
`torch_tensors` only, and every tensor of the PyTorch module must be used exactly once.
"""
from __future__ import annotations

import collections
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seed_modules
from torch_reference import randomize_, torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # yolov5 imports pkg_resources
    from yolov5.models import common as yolov5_common
from torch import nn as tnn
from ultralytics.nn.modules import C2PSA, C2f, C3, C3k2, SPPF, Bottleneck, Conv, DWConv
from ultralytics.nn.modules.block import C3k, PSABlock

from flax_mobilenet.blocks.conv_norm_act import ConvNormActSpec
from flax_mobilenet.blocks.csp import BottleneckSpec, C2fSpec, C3kSpec, C3k2Spec, C3Spec
from flax_mobilenet.blocks.inverted_residual import InvertedResidualSpec
from flax_mobilenet.blocks.psa import C2psaSpec, PSABlockSpec
from flax_mobilenet.blocks.seed_mobilenet_v3 import SeedMobileNetV3Spec
from flax_mobilenet.blocks.sppf import SppfSpec
from flax_mobilenet.blocks.stem_block import StemBlockSpec
from flax_mobilenet.blocks.yolo_conv import YoloConvSpec, conv_bn_hswish_spec, dwconv_spec
from flax_mobilenet.layers.conv import LayerSettings

RELATIVE_TOLERANCE = 1e-5
BN_EPS, BN_MOMENTUM = 1e-3, 0.03  # what ultralytics' initialize_weights gives every BatchNorm2d
SETTINGS = LayerSettings(bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def yolo_bn_(module: "torch.nn.Module") -> "torch.nn.Module":
    for layer in module.modules():
        if isinstance(layer, tnn.BatchNorm2d):
            layer.eps, layer.momentum = BN_EPS, BN_MOMENTUM
    return module


def flax_variables(mappings, state_dict, prefix: str = "") -> dict:
    """Flax variables from a PyTorch state dict through `TensorMapping`s, strict: every tensor under `prefix`
    (num_batches_tracked aside) is used exactly once, with the declared shape, and no Flax leaf is set twice."""
    state = {key: value.detach().numpy() for key, value in state_dict.items()
             if key.startswith(prefix) and not key.endswith("num_batches_tracked")}
    variables, used = {}, collections.Counter()
    for mapping in mappings:
        assert mapping.torch_key in state, f"{mapping.torch_key} not in the PyTorch module"
        value = state[mapping.torch_key]
        assert value.shape == mapping.torch_shape, (mapping.torch_key, value.shape, mapping.torch_shape)
        used[mapping.torch_key] += 1
        node = variables.setdefault(mapping.collection, {})
        for part in mapping.flax_path[:-1]:
            node = node.setdefault(part, {})
        assert mapping.flax_path[-1] not in node, f"{mapping.flax_path} set twice"
        node[mapping.flax_path[-1]] = jnp.asarray(mapping.to_flax(value))
    assert set(used) == set(state), f"unused: {sorted(set(state) - set(used))}"
    assert all(count == 1 for count in used.values()), [k for k, c in used.items() if c > 1]
    return variables


def assert_same_tree(variables, module, x):
    """The converted variables have exactly the tree and shapes the Flax module creates."""
    expected = jax.eval_shape(module.init, jax.random.key(0), x)
    shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)  # noqa: E731
    assert shapes(variables) == shapes(dict(expected)), "converted tree differs from the module's"


def nchw(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def run_case(spec, reference, shape, seed=0):
    """(our output, PyTorch's output NHWC) for one block in eval mode."""
    reference = randomize_(yolo_bn_(reference), seed)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    module = spec.module(SETTINGS, "block")
    variables = flax_variables(list(spec.torch_tensors("", ())), reference.state_dict())
    assert_same_tree(variables, module, jnp.asarray(x))
    ours = jax.jit(lambda v, x: module.apply(v, x, False))(variables, jnp.asarray(x))
    with torch.inference_mode():
        expected = reference(nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    return np.asarray(ours), expected


def legacy_sppf(c1: int, c2: int, k: int) -> "torch.nn.Module":
    """SPPF as ultralytics' parse_model builds it for v5u/v8/v11 YAML rows: cv1 activated (SiLU)."""
    block = SPPF(c1, c2, k)
    block.cv1.act = Conv.default_act
    return block


# (id, spec, PyTorch module factory, NHWC input shape)
CASES = [
    ("conv_3x3_s2", YoloConvSpec(8, 16, 3, 2), lambda: Conv(8, 16, 3, 2), (2, 13, 17, 8)),
    ("conv_1x1", YoloConvSpec(8, 12), lambda: Conv(8, 12), (2, 13, 17, 8)),
    ("conv_1x1_no_act", YoloConvSpec(8, 12, activation=None), lambda: Conv(8, 12, act=False), (2, 13, 17, 8)),
    ("conv_yolov5_stem_k6_s2_p2", YoloConvSpec(3, 16, 6, 2, padding=2), lambda: Conv(3, 16, 6, 2, 2), (2, 13, 17, 3)),
    ("conv_k4_s2_autopad", YoloConvSpec(6, 8, 4, 2), lambda: Conv(6, 8, 4, 2), (2, 13, 17, 6)),
    ("yolov5_conv_k6", YoloConvSpec(3, 16, 6, 2, padding=2), lambda: yolov5_common.Conv(3, 16, 6, 2, 2),
     (2, 14, 18, 3)),
    ("dwconv_3x3_s2", dwconv_spec(16, 16, 3, 2), lambda: DWConv(16, 16, 3, 2), (2, 13, 17, 16)),
    ("dwconv_5x5_no_act", dwconv_spec(16, 16, 5, 1, activation=None), lambda: DWConv(16, 16, 5, 1, act=False),
     (2, 13, 17, 16)),
    ("conv_bn_hswish", conv_bn_hswish_spec(3, 16, 2), lambda: seed_modules.conv_bn_hswish(3, 16, 2),
     (2, 13, 17, 3)),
    ("bottleneck_shortcut", BottleneckSpec(16, 16, True), lambda: Bottleneck(16, 16, True), (2, 13, 17, 16)),
    ("bottleneck_1x3_e1", BottleneckSpec(16, 24, True, (1, 3), 1.0), lambda: Bottleneck(16, 24, True, k=(1, 3), e=1.0),
     (2, 13, 17, 16)),
    ("c3_n2", C3Spec(16, 32, 2), lambda: C3(16, 32, 2), (2, 13, 17, 16)),
    ("c3_no_shortcut", C3Spec(16, 24, 1, False), lambda: C3(16, 24, 1, False), (2, 13, 17, 16)),
    ("yolov5_c3_n3", C3Spec(24, 32, 3), lambda: yolov5_common.C3(24, 32, 3), (2, 13, 17, 24)),
    ("yolov5_c3_no_shortcut", C3Spec(32, 48, 2, False), lambda: yolov5_common.C3(32, 48, 2, False), (2, 13, 17, 32)),
    ("c3k", C3kSpec(16, 16, 2), lambda: C3k(16, 16, 2), (2, 13, 17, 16)),
    ("c2f_n2", C2fSpec(16, 32, 2), lambda: C2f(16, 32, 2), (2, 13, 17, 16)),
    ("c2f_shortcut", C2fSpec(32, 32, 1, True), lambda: C2f(32, 32, 1, True), (2, 13, 17, 32)),
    ("c3k2_bottleneck_e025", C3k2Spec(16, 64, 2, False, 0.25), lambda: C3k2(16, 64, 2, False, 0.25), (2, 13, 17, 16)),
    ("c3k2_c3k", C3k2Spec(32, 32, 1, True), lambda: C3k2(32, 32, 1, True), (2, 13, 17, 32)),
    ("c3k2_attn", C3k2Spec(64, 128, 1, True, 0.5, True), lambda: C3k2(64, 128, 1, True, 0.5, True), (2, 7, 9, 64)),
    ("sppf", SppfSpec(32, 48), lambda: legacy_sppf(32, 48, 5), (2, 13, 17, 32)),
    ("sppf_yolo26_no_cv1_act", SppfSpec(32, 32, 5, cv1_activation=None), lambda: SPPF(32, 32, 5), (2, 13, 17, 32)),
    ("yolov5_sppf", SppfSpec(32, 48), lambda: yolov5_common.SPPF(32, 48, 5), (2, 13, 17, 32)),
    ("psablock_4_heads", PSABlockSpec(64, 0.5, 4), lambda: PSABlock(64, 0.5, 4), (2, 7, 9, 64)),
    ("c2psa_1_head", C2psaSpec(64, 64, 1), lambda: C2PSA(64, 64, 1), (2, 7, 9, 64)),
    ("c2psa_2_heads_n2", C2psaSpec(256, 256, 2), lambda: C2PSA(256, 256, 2), (2, 5, 7, 256)),
    ("stem_block", StemBlockSpec(3, 32), lambda: seed_modules.StemBlock(3, 32), (2, 13, 17, 3)),
    ("stem_block_even", StemBlockSpec(3, 16), lambda: seed_modules.StemBlock(3, 16), (2, 16, 20, 3)),
    # seed 000's MobileNetV3 rows [out, hidden, k, s, se, hs] after parse_model: (in, out, hidden, k, s, se, hs)
    *[(f"seed_mnv3_{'_'.join(map(str, row))}", SeedMobileNetV3Spec(*row), lambda row=row: seed_modules.MobileNetV3(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6]), (2, 13, 17, row[0]))
      for row in ((16, 16, 16, 3, 2, 1, 0), (16, 16, 16, 3, 1, 0, 0), (16, 24, 72, 3, 2, 0, 0),
                  (24, 24, 88, 3, 1, 0, 0), (24, 40, 96, 5, 2, 1, 1), (40, 40, 240, 5, 1, 1, 1),
                  (40, 48, 120, 5, 1, 1, 1), (80, 80, 80, 3, 1, 1, 1))],
    # seed 004's InverseResidualBlock (in, out, expansion, stride) and its stem
    *[(f"seed_mnv2_{c_in}_{c_out}_t{t}_s{s}",
       InvertedResidualSpec(c_in, c_in * t, c_out, 3, s, 1, "relu6", 0, None, s == 1 and c_in == c_out, "seed004_v2"),
       lambda c_in=c_in, c_out=c_out, t=t, s=s: seed_modules.InverseResidualBlock(c_in, c_out, t, s),
       (2, 13, 17, c_in))
      for c_in, c_out, t, s in ((32, 16, 1, 1), (16, 24, 6, 2), (24, 24, 6, 1))],
    ("seed_mnv2_stem", ConvNormActSpec(3, 32, 3, 2, "relu6", torch_names=("conv", "bn")),
     lambda: seed_modules.ConvNormReLUBlock(3, 32, (3, 3), stride=2, padding=1), (2, 13, 17, 3)),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_block_matches_pytorch(case, parity_report):
    name, spec, factory, shape = case
    ours, expected = run_case(spec, factory(), shape)
    error = relative_error(ours, expected)
    parity_report[f"yolo block {name}"] = error
    assert error <= RELATIVE_TOLERANCE, f"{name}: relative error {error:.2e}"


def test_specs_describe_their_blocks():
    assert YoloConvSpec(3, 16, 6, 2, padding=2).stride == 2
    assert StemBlockSpec(3, 32).stride == 4
    assert SeedMobileNetV3Spec(16, 24, 72, 3, 2, 0, 0).stride == 2
    for spec in (C3Spec(8, 8), C2fSpec(8, 8), C3k2Spec(8, 8, 1, True), SppfSpec(8, 8), C2psaSpec(128, 128)):
        assert spec.stride == 1 and spec.inner_taps == {}
    with pytest.raises(NotImplementedError):
        dwconv_spec(16, 32, 3)  # a grouped, not depthwise, conv
    with pytest.raises(ValueError):
        C2psaSpec(64, 128)


def test_seed004_backbone_matches_pytorch():
    """Seed 004's whole MobileNetV2 (stem + 17 blocks, keys `model.J`) and its four maps."""
    import flax.linen as nn

    specs = [ConvNormActSpec(3, 32, 3, 2, "relu6", torch_names=("conv", "bn"))]
    for c_in, t, c_out, repeat, stride in seed_modules.MobileNetV2.config:
        for _ in range(repeat):
            specs.append(InvertedResidualSpec(c_in, c_in * t, c_out, 3, stride, 1, "relu6", 0, None,
                                              stride == 1 and c_in == c_out, "seed004_v2"))
            c_in, stride = c_out, 1
    taps = (3, 6, 13, 17)  # the last layer with 24, 32, 96, 320 channels

    class Backbone(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            outputs = []
            for j, spec in enumerate(specs):
                x = spec.module(SETTINGS, f"layers_{j}")(x, train)
                outputs.append(x)
            return [outputs[j] for j in taps]

    reference = randomize_(yolo_bn_(seed_modules.MobileNetV2()))
    mappings = [m for j, spec in enumerate(specs) for m in spec.torch_tensors(f"model.{j}", (f"layers_{j}",))]
    variables = flax_variables(mappings, reference.state_dict())
    x = np.random.default_rng(1).standard_normal((1, 67, 75, 3)).astype(np.float32)
    module = Backbone()
    assert_same_tree(variables, module, jnp.asarray(x))
    ours = jax.jit(lambda v, x: module.apply(v, x))(variables, jnp.asarray(x))
    with torch.inference_mode():
        expected = [y.numpy().transpose(0, 2, 3, 1) for y in reference(nchw(x))]
    assert [o.shape[-1] for o in ours] == reference.width_list == [24, 32, 96, 320]
    for o, e in zip(ours, expected):
        assert o.shape == e.shape
        assert relative_error(o, e) <= RELATIVE_TOLERANCE


def test_train_mode_updates_batch_stats_as_pytorch():
    """C2f in train mode: batch statistics normalise, running statistics move with momentum 0.03.

    PyTorch keeps the unbiased batch variance in running_var, Flax the biased one: the expected Flax value
    is PyTorch's minus momentum * var_unbiased / n."""
    spec, shape = C2fSpec(16, 32, 1, True), (2, 13, 17, 16)
    reference = randomize_(yolo_bn_(C2f(16, 32, 1, True)), seed=3)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    variables = flax_variables(list(spec.torch_tensors("", ())), reference.state_dict())
    module = spec.module(SETTINGS, "block")
    ours, updates = jax.jit(lambda v, x: module.apply(v, x, True, mutable=["batch_stats"]))(variables, jnp.asarray(x))
    reference.train()
    with torch.no_grad():
        expected = reference(nchw(x)).numpy().transpose(0, 2, 3, 1)
    assert relative_error(ours, expected) <= RELATIVE_TOLERANCE
    after = reference.state_dict()
    for mapping in spec.torch_tensors("", ()):
        if mapping.collection != "batch_stats":
            continue
        node = updates["batch_stats"]
        for part in mapping.flax_path:
            node = node[part]
        torch_new = after[mapping.torch_key].numpy()
        if mapping.torch_key.endswith("running_var"):
            count = shape[0] * shape[1] * shape[2]  # every BN of this C2f runs at the input's size
            unbiased = (torch_new - (1 - BN_MOMENTUM) * before[mapping.torch_key].numpy()) / BN_MOMENTUM
            torch_new = torch_new - BN_MOMENTUM * unbiased / count
        np.testing.assert_allclose(np.asarray(node), torch_new, rtol=1e-5, atol=1e-6, err_msg=mapping.torch_key)


class Wrapped:
    """The block as a model's layer (Flax name 'block'), so that a lone ConvNormAct is a conv-BN pair too."""

    def __init__(self, spec, settings):
        import flax.linen as nn

        class Model(nn.Module):
            @nn.compact
            def __call__(self, x):
                return spec.module(settings, "block")(x, False)

        self.module = Model()


@pytest.mark.parametrize("name", ["c3k2_attn", "c2psa_2_heads_n2", "seed_mnv3_24_40_96_5_2_1_1",
                                  "conv_yolov5_stem_k6_s2_p2"])
def test_batchnorm_folding(name):
    """Every conv-BN pair is a ConvNormAct: the folded form (`fold_bn`) gives the same output."""
    import dataclasses

    from flax_mobilenet.inference.fold import fold_batchnorm

    _, spec, factory, shape = next(case for case in CASES if case[0] == name)
    reference = randomize_(yolo_bn_(factory()))
    variables = flax_variables(list(spec.torch_tensors("", ("block",))), reference.state_dict())
    x = jnp.asarray(np.random.default_rng(2).standard_normal(shape).astype(np.float32))
    unfolded = jax.jit(Wrapped(spec, SETTINGS).module.apply)(variables, x)
    folded_module = Wrapped(spec, dataclasses.replace(SETTINGS, fold_bn=True)).module
    folded_variables = fold_batchnorm(variables, BN_EPS)
    assert "batch_stats" not in folded_variables
    assert_same_tree(folded_variables, folded_module, x)
    folded = jax.jit(folded_module.apply)(folded_variables, x)
    assert relative_error(folded, np.asarray(unfolded)) <= RELATIVE_TOLERANCE
