"""YOLO detectors against ultralytics 8.4, the yolov5 7.0 package and the seeds' hybrids built from their modules:
whole state dicts converted strictly, 'predictions' compared at a square and a non-square size, parameter counts,
the neck's maps in feature_info, conversion errors, and a YOLO head on other registered backbones."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yolo_reference as yr

import flax_mobilenet as fm
from flax_mobilenet.convert import ConversionError

# name -> (reference builder, parameters in the reference (nc 80 unless noted), classes)
REFERENCES = {
    "yolov8n": (lambda: yr.ultralytics_model("yolov8n.yaml"), 3_157_200, 80),
    "yolov8s": (lambda: yr.ultralytics_model("yolov8s.yaml"), 11_166_560, 80),
    "yolov5nu": (lambda: yr.ultralytics_model("yolov5nu.yaml"), 2_654_816, 80),
    "yolo11n": (lambda: yr.ultralytics_model("yolo11n.yaml"), 2_624_080, 80),
    "yolov5n": (lambda: yr.yolov5_model("yolov5n.yaml"), 1_872_157, 80),
    "yolov5_mobilenet_v3_small": (lambda: yr.seed000_model("small"), 5_235_267, 80),
    "yolov5_mobilenet_v3_large": (lambda: yr.seed000_model("large"), 5_590_759, 20),
    "yolov8n_mobilenet_v2": (lambda: yr.seed004_model("n"), 3_905_984, 80),
    "yolov8s_mobilenet_v2": (lambda: yr.seed004_model("s"), 8_225_536, 80),
}
SIZES = ((96, 96), (64, 128))  # one square, one not: multiples of 32 (the 256x256 / 320x416, smaller)
BATCH = 2
TOLERANCE = 1e-5


def images(size, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((BATCH, *size, 3), dtype=np.float32)


@functools.cache
def converted(name: str):
    reference = REFERENCES[name][0]()
    return fm.create_model(name), fm.convert_state_dict(name, yr.state_dict_numpy(reference))


def count(tree) -> int:
    return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", REFERENCES)
def test_predictions_equal_the_reference(name, parity_report):
    model, variables = converted(name)
    apply = jax.jit(lambda v, x: model.apply(v, x)["predictions"])
    for size in SIZES:
        x = images(size)
        ours = np.asarray(apply(variables, x))
        theirs = yr.predictions(REFERENCES[name][0](), x)
        assert ours.shape == theirs.shape, (size, ours.shape, theirs.shape)
        for part, cut in (("boxes", slice(0, 4)), ("scores", slice(4, None))):
            difference = np.max(np.abs(ours[..., cut] - theirs[..., cut])) / np.max(np.abs(theirs[..., cut]))
            parity_report[f"{name} predictions {part} {size[0]}x{size[1]}"] = difference
            assert difference < TOLERANCE, (name, size, part, difference)


@pytest.mark.parametrize("name", REFERENCES)
def test_parameter_counts(name):
    model, variables = converted(name)
    builder, expected, classes = REFERENCES[name]
    assert model.num_classes == classes
    fixed = 16 if model.detection_head.__class__.__name__ == "YoloDetectSpec" else 0  # DFL's arange(16) conv
    assert count(variables["params"]) + fixed == expected
    assert sum(p.numel() for p in builder().parameters()) == expected


def test_neck_maps_in_feature_info():
    info = fm.feature_info("yolov8n")
    head = fm.model_spec("yolov8n").head.heads[0][1]
    assert head.feature_taps == ("neck.5", "neck.8", "neck.11")
    assert [(info[t].stride, info[t].channels) for t in head.feature_taps] == [(8, 64), (16, 128), (32, 256)]
    assert info["neck.1"].channels == 256 + 128 and info["neck.1"].stride == 16  # upsampled P5 ++ P4
    assert info["stride32"].layer == 9  # SPPF
    model = fm.create_model("yolov8n", feature_taps=("neck.5", "stride16"))
    maps = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.zeros((1, 64, 96, 3)))[0]
    assert maps["neck.5"].shape == (1, 8, 12, 64) and maps["stride16"].shape == (1, 4, 6, 128)
    hybrid = fm.feature_info("yolov8n_mobilenet_v2")
    assert hybrid["neck.0"].channels == 256 and hybrid["neck.0"].stride == 32  # SPPF on the 320-channel P5
    assert hybrid["stride8"].channels == 32 and hybrid["stride16"].channels == 96


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "mobilenetv4_conv_small"])
def test_yolo_heads_on_other_backbones(backbone):
    shapes = {}
    for name in ("yolov8n", "yolov5n"):
        model = fm.create_model(name, backbone=backbone, num_classes=3)
        out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.zeros((1, 64, 96, 3)))
        shapes[name] = out["predictions"].shape
        classifier = jax.eval_shape(fm.create_model(backbone).init, jax.random.key(0), jnp.zeros((1, 64, 96, 3)))
        layers = [k for k in variables["params"] if k.startswith("features_")]
        assert layers and all(jax.tree.map(lambda a, b: a.shape == b.shape, variables["params"][k],
                                           classifier["params"][k]) for k in layers)
    assert shapes["yolov8n"] == (1, 8 * 12 + 4 * 6 + 2 * 3, 4 + 3)
    assert shapes["yolov5n"] == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 5 + 3)
    with pytest.raises(ValueError, match="classifier's layers"):
        fm.create_model("yolov8n", backbone="ssdlite320_mobilenet_v3_large")


def test_conversion_names_what_is_wrong():
    state = yr.state_dict_numpy(yr.ultralytics_model("yolov8n.yaml"))
    with pytest.raises(ConversionError, match="looks like a yolov8n"):
        fm.convert_state_dict("yolov8s", state)
    with pytest.raises(ConversionError, match="num_classes=80"):
        fm.convert_state_dict("yolov8n", state, num_classes=20)
    broken = dict(state)
    broken["model.22.dfl.conv.weight"] = broken["model.22.dfl.conv.weight"] * 2
    with pytest.raises(ConversionError, match="dfl.conv.weight is a fixed tensor"):
        fm.convert_state_dict("yolov8n", broken)
    missing = {k: v for k, v in state.items() if not k.startswith("model.21.cv2.")}
    with pytest.raises(ConversionError, match="missing keys"):
        fm.convert_state_dict("yolov8n", missing)


def test_yolov5_anchors_from_autoanchor_are_named():
    state = dict(yr.state_dict_numpy(yr.yolov5_model("yolov5n.yaml")))
    anchors = state["model.24.anchors"] * 1.5
    state["model.24.anchors"] = anchors
    with pytest.raises(ConversionError, match="anchors="):
        fm.convert_state_dict("yolov5n", state)
    pixels = anchors * np.array([8.0, 16.0, 32.0])[:, None, None]
    variables = fm.convert_state_dict("yolov5n", state, anchors=pixels.tolist())
    model = fm.create_model("yolov5n", anchors=pixels.tolist())
    reference = yr.yolov5_model("yolov5n.yaml")
    x = images(SIZES[0])
    saved = reference.model[-1].anchors.clone()
    try:
        reference.model[-1].anchors.copy_(yr.torch.from_numpy(anchors))
        reference.model[-1].anchor_grid = [yr.torch.empty(0)] * 3
        theirs = yr.predictions(reference, x)
    finally:
        reference.model[-1].anchors.copy_(saved)
        reference.model[-1].anchor_grid = [yr.torch.empty(0)] * 3
    ours = np.asarray(model.apply(variables, x)["predictions"])
    assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < TOLERANCE


def test_detect_after_nms_equals_ultralytics():
    model, variables = converted("yolov8n")
    x = images(SIZES[1], seed=1)
    predictions = np.asarray(jax.jit(lambda v, x: model.apply(v, x)["predictions"])(variables, x))
    for preset, reference_options in (("predict", dict(conf_thres=0.25, iou_thres=0.7)),
                                      ("val", dict(conf_thres=0.001, iou_thres=0.7, multi_label=True))):
        found = jax.jit(lambda v, x: model.detect(v, x, preset=preset))(variables, x)
        expected = yr.ultralytics_nms(predictions.transpose(0, 2, 1), max_det=300, **reference_options)
        for i, rows in enumerate(expected):
            n = int(found.num_valid[i])
            assert n == len(rows), (preset, i, n, len(rows))
            np.testing.assert_allclose(np.asarray(found.boxes[i, :n]), rows[:, :4], atol=1e-3)
            np.testing.assert_allclose(np.asarray(found.scores[i, :n]), rows[:, 4], atol=1e-6)
            np.testing.assert_array_equal(np.asarray(found.labels[i, :n]), rows[:, 5].astype(int))
