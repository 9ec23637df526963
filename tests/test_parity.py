"""Converted weights reproduce the real torchvision / timm modules (fp32, eval mode)."""
import jax
import numpy as np
import pytest

from torch_reference import randomize_, timm, torch_features, torch_forward, tv_models

import flax_mobilenet as fm
from flax_mobilenet.backbones.spec import feature_info

from timm.models.efficientnet import _gen_mobilenet_v1

RELATIVE_TOLERANCE = 1e-4
INPUT_SIZES = [(97, 97), (75, 113)]  # square and non-square, odd


def torchvision_model(name, **overrides):
    return getattr(tv_models, name)(**overrides)


CASES = [
    # (our name, overrides, reference factory)
    *[("mobilenet_v2", dict(width_mult=w), lambda o: torchvision_model("mobilenet_v2", **o))
      for w in (0.35, 0.5, 0.75, 1.0, 1.4)],
    *[(name, o, lambda o, name=name: torchvision_model(name, **o))
      for name in ("mobilenet_v3_large", "mobilenet_v3_small")
      for o in (dict(), dict(width_mult=0.75), dict(reduced_tail=True), dict(dilated=True),
                dict(reduced_tail=True, dilated=True))],
    ("mobilenet_v3_small", dict(num_classes=10), lambda o: torchvision_model("mobilenet_v3_small", **o)),
    *[("mobilenet_v1", dict(width_mult=w),
       lambda o: _gen_mobilenet_v1("mobilenetv1_100", channel_multiplier=o["width_mult"]))
      for w in (0.25, 0.5, 0.75, 1.0)],
    *[(name, dict(), lambda o, name=name: timm.create_model(name))
      for name in ("mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100")],
]


def case_id(case):
    name, overrides, _ = case
    return name + "".join(f"-{k}={v}" for k, v in overrides.items())


def relative_error(ours, reference):
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_logits_match_reference(case, parity_report):
    name, overrides, reference_factory = case
    reference = randomize_(reference_factory(overrides), seed=len(case_id(case)))
    variables = fm.convert_state_dict(name, reference.state_dict(), **overrides)
    model = fm.create_model(name, **overrides)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    rng = np.random.default_rng(0)
    for height, width in INPUT_SIZES:
        images = rng.standard_normal((2, height, width, 3), dtype=np.float32)
        expected = torch_forward(reference, images)
        ours = np.asarray(apply(variables, images))
        assert ours.shape == expected.shape
        error = relative_error(ours, expected)
        parity_report[f"{case_id(case)} {height}x{width}"] = error
        assert error <= RELATIVE_TOLERANCE, f"{case_id(case)} at {height}x{width}: relative error {error:.2e}"


def test_param_counts_equal_reference():
    references = {"mobilenet_v2": tv_models.mobilenet_v2(), "mobilenet_v3_large": tv_models.mobilenet_v3_large(),
                  "mobilenet_v3_small": tv_models.mobilenet_v3_small(),
                  **{n: timm.create_model(n) for n in ("mobilenetv1_100", "mobilenetv2_100",
                                                       "mobilenetv3_large_100", "mobilenetv3_small_100")}}
    references["mobilenet_v1"] = references["mobilenetv1_100"]
    assert set(references) <= set(fm.list_models())  # the other families check theirs in their own files
    for name, reference in references.items():
        shapes = jax.eval_shape(fm.create_model(name).init, jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
        ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
        assert ours == sum(p.numel() for p in reference.parameters()), name


@pytest.mark.parametrize("name,overrides,taps", [
    ("mobilenet_v2", {}, ("stride4", "stride8", "stride16", "stride32")),
    ("mobilenet_v3_large", {}, ("stride4", "stride8", "stride16", "stride32")),
    ("mobilenet_v3_small", {"width_mult": 0.75}, ("stride8", "stride16", "stride32")),
    # torchvision's LR-ASPP taps: 'low' = features[4], 'high' = features[16] of the dilated V3-Large
    ("mobilenet_v3_large", {"dilated": True}, ("features.4", "features.16", "stride16")),
])
def test_feature_taps_match_torchvision_backbone(name, overrides, taps):
    reference = randomize_(torchvision_model(name, **overrides), seed=3)
    variables = fm.convert_state_dict(name, reference.state_dict(), **overrides)
    model = fm.create_model(name, feature_taps=taps, **overrides)
    images = np.random.default_rng(1).standard_normal((2, 97, 129, 3), dtype=np.float32)
    ours = jax.jit(model.apply)(variables, images)
    expected = torch_features(reference.features, images)
    info = fm.feature_info(name, **overrides)
    assert set(ours) == set(taps)
    for tap in taps:
        reference_map = expected[info[tap].layer]
        assert ours[tap].shape == reference_map.shape
        assert ours[tap].shape[-1] == info[tap].channels
        assert relative_error(np.asarray(ours[tap]), reference_map) <= RELATIVE_TOLERANCE, tap


def test_feature_info_strides_and_channels():
    info = fm.feature_info("mobilenet_v3_large")
    assert [(info[f"stride{s}"].layer, info[f"stride{s}"].channels) for s in (2, 4, 8, 16, 32)] == \
        [(1, 16), (3, 24), (6, 40), (12, 112), (16, 960)]
    dilated = fm.feature_info("mobilenet_v3_large", dilated=True)
    assert "stride32" not in dilated and dilated["stride16"].layer == 16
    assert fm.feature_info("mobilenet_v2", width_mult=0.5)["stride32"].channels == 1280
    with pytest.raises(ValueError, match="unknown feature tap 'stride64'"):
        jax.eval_shape(fm.create_model("mobilenet_v2", feature_taps=["stride64"]).init, jax.random.key(0),
                       np.zeros((1, 64, 64, 3)))


def test_inner_expand_tap_matches_torchvision_block():
    """'features.13.expand': the expansion output inside V3-Large's C4 block, where SSDLite attaches its head."""
    reference = randomize_(torchvision_model("mobilenet_v3_large"), seed=5)
    captured = {}
    reference.features[13].block[0].register_forward_hook(lambda module, args, out: captured.update(x=out))
    images = np.random.default_rng(2).standard_normal((2, 75, 97, 3), dtype=np.float32)
    torch_forward(reference, images)
    variables = fm.convert_state_dict("mobilenet_v3_large", reference.state_dict())
    model = fm.create_model("mobilenet_v3_large", feature_taps=("features.13.expand", "stride16"))
    ours = jax.jit(model.apply)(variables, images)
    expected = captured["x"].numpy().transpose(0, 2, 3, 1)
    info = fm.feature_info("mobilenet_v3_large")["features.13.expand"]
    assert ours["features.13.expand"].shape == expected.shape and expected.shape[-1] == info.channels == 672
    assert info.stride == 16
    assert relative_error(np.asarray(ours["features.13.expand"]), expected) <= RELATIVE_TOLERANCE
