"""SSDLite detection (torchvision ssdlite320_mobilenet_v3_large): raw head outputs, anchors, detections end to end,
parameter count, conversion, BatchNorm folding, weights info; against the real torchvision module (random
weights, randomized BatchNorm statistics, eval, fp32).  The same head on MobileNetV2 and MobileNetV4 taps.

torchvision's compiled NMS op does not load here: `batched_nms` is test_detection's NumPy reference of its CPU
kernel (per class, as `_batched_nms_vanilla`).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from torch_reference import randomize_, torch, tv_models
import torchvision  # noqa: E402  (the shim torch_reference installs)
from torchvision.models.detection import ssd as tv_ssd  # noqa: E402
from torchvision.models.detection import ssdlite as tv_ssdlite  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.ops import boxes as tv_box_ops  # noqa: E402

from test_detection import NMS_CALLS, max_diff, torch_batched_nms  # noqa: E402

import flax_mobilenet as fm  # noqa: E402
from flax_mobilenet import detection as det  # noqa: E402
from flax_mobilenet.backbones.detection import resolve_ssdlite  # noqa: E402
from flax_mobilenet.backbones.mobilenet_v4 import resolve_conv_small  # noqa: E402
from flax_mobilenet.convert import ConversionError, tensor_mappings  # noqa: E402
from flax_mobilenet.heads import DenseHeads, SsdliteSpec  # noqa: E402
from flax_mobilenet.inference import batchnorm_eps, folded_model  # noqa: E402
from flax_mobilenet.weights import COCO_LABELS  # noqa: E402

NAME = "ssdlite320_mobilenet_v3_large"
RELATIVE_TOLERANCE = 1e-4
SIZES = {"320x320": (320, 320), "256x192": (256, 192)}  # (height, width); the second fed past torchvision's resize
NUM_PARAMS = 3_440_060


@pytest.fixture
def torchvision_nms(monkeypatch):
    # The shim package skips torchvision/__init__.py, which defines _is_tracing (transform, ops.boxes use it).
    monkeypatch.setattr(torchvision, "_is_tracing", lambda: False, raising=False)
    monkeypatch.setattr(tv_box_ops, "batched_nms", torch_batched_nms)
    monkeypatch.setattr(tv_ssd.box_ops, "batched_nms", torch_batched_nms)


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def nchw(x: np.ndarray) -> "torch.Tensor":
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def detection_randomize_(model: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
    """`randomize_`, after every conv weight is drawn N(0, 1 / fan_in) and the classification convs N(0, 400 /
    fan_in): logits of std ~3, so that scores are spread out (SSDLite's own init, std 0.03, gives near-uniform
    scores with exact ties at the top-k cut-offs, where torch's choice among equals is unspecified)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 4:
                gain = 20.0 if name.startswith("head.classification_head") and name.endswith(".1.weight") else 1.0
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * gain / fan_in ** 0.5)
    return randomize_(model, seed)


@pytest.fixture(scope="module")
def reference():
    return detection_randomize_(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=91), seed=0)


@pytest.fixture(scope="module")
def variables(reference):
    return fm.convert_state_dict(NAME, reference.state_dict())


@pytest.fixture(scope="module")
def model():
    return fm.create_model(NAME)


@pytest.fixture(scope="module")
def images():
    """[0, 1] images (torchvision's input) and the same normalized, (x - 0.5) / 0.5 in float32 as its transform."""
    photos = [Image.fromarray(skimage_data.astronaut()), Image.fromarray(skimage_data.chelsea())]
    out = {}
    for case, (height, width) in SIZES.items():
        raw = np.stack([np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR), np.float32)
                        for photo in photos]) / np.float32(255)
        out[case] = (raw, (raw - np.float32(0.5)) / np.float32(0.5))
    return out


@pytest.fixture(scope="module")
def expected(reference, images):
    """torchvision's backbone + head on the normalized images: raw outputs, feature maps, anchors."""
    out = {}
    with torch.inference_mode():
        for case, (_, x) in images.items():
            tensors = nchw(x)
            features = list(reference.backbone(tensors).values())
            head = {k: v.numpy() for k, v in reference.head(features).items()}
            anchors = reference.anchor_generator(ImageList(tensors, [SIZES[case]] * len(x)), features)
            out[case] = dict(head=head, features=[f.numpy().transpose(0, 2, 3, 1) for f in features],
                             anchors=anchors[0].numpy())
    return out


@pytest.fixture(scope="module")
def applied(model, variables, images):
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return {case: jax.tree.map(np.asarray, apply(variables, x)) for case, (_, x) in images.items()}


@pytest.mark.parametrize("case", SIZES)
def test_raw_outputs_match_torchvision(case, applied, expected, parity_report):
    ours, reference = applied[case], expected[case]["head"]
    assert list(ours) == list(reference) == ["bbox_regression", "cls_logits"]
    anchors = len(expected[case]["anchors"])
    for output, width in (("bbox_regression", 4), ("cls_logits", 91)):
        assert ours[output].shape == reference[output].shape == (2, anchors, width)
        assert ours[output].dtype == np.float32
        error = relative_error(ours[output], reference[output])
        parity_report[f"{NAME} {output} {case}"] = error
        assert error <= RELATIVE_TOLERANCE, f"{output} {case}: relative error {error:.2e}"


@pytest.mark.parametrize("case", SIZES)
def test_anchors_and_feature_maps_match_torchvision(case, model, variables, images, expected):
    size = SIZES[case]
    anchors = model.anchors(size)
    assert anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors, expected[case]["anchors"])  # bit for bit
    np.testing.assert_array_equal(anchors, det.ssdlite_anchors(size))
    # The head's maps (num_classes=0: the maps its heads take) are torchvision's backbone outputs
    backbone = fm.create_model(NAME, num_classes=0)
    maps = jax.eval_shape(backbone.apply, variables, images[case][1])
    head = model.spec.head.heads[0][1]
    assert [tuple(maps[tap].shape) for tap in head.feature_taps] == [f.shape for f in expected[case]["features"]]
    assert head.feature_sizes(size) == det.ssdlite_feature_sizes(size)


def compare_detections(ours: det.Detections, theirs: list[dict], tolerance: float) -> tuple[float, float]:
    """Same detections per image (compared in (label, score) order); returns (box, score) max differences."""
    ours = jax.tree.map(np.asarray, ours)
    box_error = score_error = 0.0
    for i, detections in enumerate(theirs):
        count = len(detections["scores"])
        assert ours.num_valid[i] == count > 0
        assert not ours.scores[i, count:].any() and not ours.labels[i, count:].any()
        mine = np.lexsort((-ours.scores[i, :count], ours.labels[i, :count]))
        other = np.lexsort((-detections["scores"].numpy(), detections["labels"].numpy()))
        np.testing.assert_array_equal(ours.labels[i, :count][mine], detections["labels"].numpy()[other])
        box_error = max(box_error, max_diff(ours.boxes[i, :count][mine], detections["boxes"].numpy()[other]))
        score_error = max(score_error, max_diff(ours.scores[i, :count][mine], detections["scores"].numpy()[other]))
    assert box_error < tolerance * 320 and score_error < tolerance
    return box_error, score_error


def test_postprocess_of_the_same_raw_outputs_matches_torchvision(model, reference, expected, torchvision_nms,
                                                                 parity_report):
    """The model's post-processing (its head's anchors and thresholds) on torchvision's raw outputs."""
    raw = expected["320x320"]["head"]
    ours = model.spec.head.heads[0][1].postprocess(raw, SIZES["320x320"])
    NMS_CALLS.clear()
    with torch.no_grad():  # the thresholds are the SSD module's (score 0.001, NMS 0.55, top 300, 300 per image)
        theirs = reference.postprocess_detections({k: torch.from_numpy(v) for k, v in raw.items()},
                                                 [torch.from_numpy(expected["320x320"]["anchors"])] * 2,
                                                 [SIZES["320x320"]] * 2)
    assert len(NMS_CALLS) == 2 and all(kept < candidates for candidates, kept in NMS_CALLS)  # NMS suppressed
    box_error, score_error = compare_detections(ours, theirs, 1e-6)
    parity_report[f"{NAME} postprocess boxes (px), same raw outputs"] = box_error
    parity_report[f"{NAME} postprocess scores, same raw outputs"] = score_error


def test_detect_end_to_end_matches_torchvision(reference, variables, images, applied, torchvision_nms,
                                                parity_report):
    """Our jitted detect (BatchNorm folded) on normalized images against torchvision's whole model on the [0, 1]
    images (its transform: resize 320 -> 320 is the identity, then (x - 0.5) / 0.5)."""
    folded, folded_variables = folded_model(NAME, variables)
    raw, normalized = images["320x320"]
    ours = jax.jit(folded.detect)(folded_variables, normalized)
    with torch.inference_mode():
        theirs = reference(list(nchw(raw)))
    box_error, score_error = compare_detections(ours, theirs, 1e-4)
    parity_report[f"{NAME} detect boxes (px), end to end"] = box_error
    parity_report[f"{NAME} detect scores, end to end"] = score_error
    # options reach the post-processing (checked before anything runs)
    with pytest.raises(TypeError, match="postprocess does not take iou"):
        folded.detect(folded_variables, normalized, iou=0.5)
    fewer = folded.spec.head.heads[0][1].postprocess(applied["320x320"], SIZES["320x320"], score_threshold=0.8,
                                                     detections_per_img=10)
    scores = np.asarray(fewer.scores)
    assert scores.shape == (2, 10) and np.all(scores[np.asarray(fewer.labels) > 0] > 0.8)


def test_compile_inference_equals_apply(variables, images, applied):
    """Every conv-BN pair (backbone, extra blocks, both head branches) folded; the output dict as apply's."""
    eps = batchnorm_eps(fm.create_model(NAME))
    assert len(eps) == 70 and set(eps.values()) == {1e-3}  # torchvision's 70 BatchNorm2d, eps 0.001 each
    folded, folded_variables = folded_model(NAME, variables)
    assert "batch_stats" not in folded_variables
    with jax.default_matmul_precision("highest"):
        predict = fm.compile_inference(NAME, variables, batch_size=2, image_size=SIZES["256x192"])
        ours = predict(images["256x192"][1])
    for output, expected in applied["256x192"].items():
        assert ours[output].shape == expected.shape
        assert np.abs(np.asarray(ours[output]) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_param_count_registry_and_keys(reference, model):
    assert model.num_classes == 91  # create_model's default: the reference's
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert ours == sum(p.numel() for p in reference.parameters()) == NUM_PARAMS
    spec = fm.model_spec(NAME)
    assert isinstance(spec.head, DenseHeads) and (spec.bn_eps, spec.bn_momentum) == (1e-3, 0.03)
    assert len(spec.layers) == 17 + 4 and spec.layers[0].torch_prefix == "backbone.features.0.0"
    head = spec.head.heads[0][1]
    assert head.feature_taps == ("features.13.expand", "features.16", "features.17", "features.18", "features.19",
                                 "features.20")
    assert head.in_features == (672, 480, 512, 256, 256, 128) and head.strides == (16, 32, 64, 128, 256, 512)
    assert head.num_anchors == tuple(reference.anchor_generator.num_anchors_per_location())
    info = fm.feature_info(NAME)
    assert (info["features.13.expand"].stride, info["features.16"].channels) == (16, 480)  # reduced tail
    reference_keys = {k: tuple(v.shape) for k, v in reference.state_dict().items()
                      if not k.endswith("num_batches_tracked")}
    assert {m.torch_key: m.torch_shape for m in tensor_mappings(spec, 91)} == reference_keys
    for option in ("width_mult", "dilated"):  # torchvision's builder cannot change them either
        with pytest.raises(TypeError, match=f"does not take {option}"):
            fm.create_model(NAME, **{option: 1.0})
    with pytest.raises(ValueError, match="not a detection model"):
        fm.create_model("mobilenet_v3_large").anchors((224, 224))


def full_tail_reference(num_classes: int = 91) -> "torch.nn.Module":
    """torchvision's SSDLite as built with ImageNet backbone weights (reduced_tail=False), without downloading."""
    norm = functools.partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
    backbone = tv_ssdlite._mobilenet_extractor(tv_models.mobilenet_v3_large(norm_layer=norm), 6, norm)
    generator = tv_ssdlite.DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = tv_ssdlite.det_utils.retrieve_out_channels(backbone, (320, 320))
    head = tv_ssdlite.SSDLiteHead(channels, generator.num_anchors_per_location(), num_classes, norm)
    return tv_ssd.SSD(backbone, generator, (320, 320), num_classes, head=head)


def test_conversion_errors_are_named(reference):
    state_dict = dict(reference.state_dict())
    broken = dict(state_dict)
    del broken["head.regression_head.module_list.3.1.bias"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  head.regression_head.module_list.3.1.bias"):
        fm.convert_state_dict(NAME, broken)
    broken = dict(state_dict, **{"backbone.extra.4.0.0.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"1 unexpected keys:\n  backbone.extra.4.0.0.weight"):
        fm.convert_state_dict(NAME, broken)
    broken = dict(state_dict, **{"backbone.features.1.0.1.0.weight": torch.zeros(672, 1, 3, 3)})
    with pytest.raises(ConversionError, match=r"backbone.features.1.0.1.0.weight: checkpoint has \(672, 1, 3, 3\)"):
        fm.convert_state_dict(NAME, broken)
    # the class count is read from the head (anchors * classes channels) and named
    with pytest.raises(ConversionError, match=r"has 91 classes, not num_classes=10; pass num_classes=91"):
        fm.convert_state_dict(NAME, state_dict, num_classes=10)
    few = randomize_(torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5), seed=1)
    assert jax.tree.leaves(fm.convert_state_dict(NAME, few.state_dict(), num_classes=5))
    # a checkpoint trained from torchvision's ImageNet backbone has the full tail: the message names the option
    with pytest.raises(ConversionError, match=rf"looks like a {NAME} \(reduced_tail=False\) checkpoint"):
        fm.convert_state_dict(NAME, full_tail_reference().state_dict())
    classifier = tv_models.mobilenet_v3_large().state_dict()
    with pytest.raises(ConversionError, match=r"looks like a mobilenet_v3_large checkpoint"):
        fm.convert_state_dict(NAME, classifier)


def test_weights_info_is_torchvisions_detection_transform(reference):
    info, weights = fm.weights_info(NAME), tv_ssdlite.SSDLite320_MobileNet_V3_Large_Weights.COCO_V1
    transform = reference.transform  # GeneralizedRCNNTransform: the weights' own transform only scales to [0, 1]
    assert info.reference.split()[1] == f"{type(weights).__name__}.{weights.name}"
    assert info.resize_mode == "fixed" and not info.center_crop
    assert (info.crop_size, info.crop_size) == transform.fixed_size and (info.resize_size,) == transform.min_size
    assert info.interpolation == "bilinear"
    assert (list(info.mean), list(info.std)) == (transform.image_mean, transform.image_std) == ([0.5] * 3, [0.5] * 3)
    assert info.labels == "coco" and list(COCO_LABELS) == weights.meta["categories"] and len(COCO_LABELS) == 91
    assert weights.meta["num_params"] == NUM_PARAMS
    assert info.describe() == ("RGB, resize to 320x320 (bilinear, aspect not kept), no crop, scale to [0, 1], "
                               "subtract mean, divide by std")
    assert fm.weights_info("ssdlite320_mobilenet_v2").reference.startswith("none:")
    with pytest.raises(ValueError, match="resize_mode 'fixed'"):
        fm.WeightsInfo(320, 320, resize_mode="fixed")  # center_crop defaults to True


def test_ssdlite_on_mobilenet_v2():
    """MobileNetV2 paper section 6.2: the expansion of the first stride-32 block (576 channels, stride 16), then
    the final 1x1 conv; no torchvision weights, keys in torchvision's SSDLite layout."""
    size = (160, 96)
    model = fm.create_model("ssdlite320_mobilenet_v2")
    spec = model.spec
    head = spec.head.heads[0][1]
    assert head.feature_taps[:2] == ("features.14.expand", "features.18")
    assert head.in_features == (576, 1280, 512, 256, 256, 128) and head.strides == (16, 32, 64, 128, 256, 512)
    keys = {m.torch_key for m in tensor_mappings(spec, 91)}
    assert {"backbone.features.0.14.0.weight", "backbone.features.1.0.1.0.weight", "backbone.features.1.0.2.weight",
            "backbone.features.1.0.3.running_var", "backbone.features.1.4.0.weight",
            "backbone.extra.0.0.0.weight"} <= keys
    maps = jax.eval_shape(fm.create_model("ssdlite320_mobilenet_v2", num_classes=0).init_with_output,
                          jax.random.key(0), jax.ShapeDtypeStruct((1, *size, 3), np.float32))[0]
    assert [tuple(maps[tap].shape[1:3]) for tap in head.feature_taps] == head.feature_sizes(size)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, *size, 3), dtype=np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)  # random variables: cheaper than compiling init
    variables = jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(np.float32) / np.prod(s.shape[:-1]),
                             shapes)
    outputs = jax.jit(model.apply)(variables, x)
    anchors = model.anchors(size)
    assert outputs["bbox_regression"].shape == (2, len(anchors), 4)
    assert outputs["cls_logits"].shape == (2, len(anchors), 91)
    assert all(np.isfinite(np.asarray(v)).all() for v in outputs.values())
    np.testing.assert_array_equal(anchors, det.default_boxes(head.feature_sizes(size), size))


def test_ssdlite_head_on_mobilenetv4_taps():
    """No expansion tap in MobileNetV4's C4 block: map 0 is the last stride-16 layer; channels from feature_info."""
    spec = resolve_ssdlite(resolve_conv_small, "timm", bn_eps=1e-3, bn_momentum=0.03)
    head = spec.head.heads[0][1]
    assert isinstance(head, SsdliteSpec) and head.feature_taps[:2] == ("features.10", "features.17")
    assert head.in_features[:2] == (96, 960) and spec.layers[1].torch_prefix == "backbone.blocks.0.0"
    size = (128, 96)
    model = fm.MobileNet(spec, num_classes=7)
    shapes = jax.eval_shape(model.init_with_output, jax.random.key(0),
                            jax.ShapeDtypeStruct((2, *size, 3), np.float32))[0]
    anchors = model.anchors(size)
    assert shapes["cls_logits"].shape == (2, len(anchors), 7)
    assert shapes["bbox_regression"].shape == (2, len(anchors), 4)
    maps = jax.eval_shape(fm.MobileNet(spec, num_classes=0).init_with_output, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, *size, 3), np.float32))[0]
    assert [tuple(maps[tap].shape[1:3]) for tap in head.feature_taps] == head.feature_sizes(size)


def test_preprocessing_is_torchvisions_fixed_size_transform(monkeypatch):
    """predict-style preprocessing of SSDLite's weights: GeneralizedRCNNTransform's resize to 320x320 (torch's
    bilinear interpolate, aspect not kept) and (x - 0.5) / 0.5."""
    from flax_mobilenet.preprocessing import preprocess_for
    monkeypatch.setattr(torchvision, "_is_tracing", lambda: False, raising=False)  # missing from the shim
    image = Image.fromarray(skimage_data.chelsea())  # 300x451, resized down and not square
    ours = preprocess_for(image, fm.weights_info("ssdlite320_mobilenet_v3_large"))
    transform = tv_models.detection.transform.GeneralizedRCNNTransform(
        320, 320, [0.5] * 3, [0.5] * 3, size_divisible=1, fixed_size=(320, 320))
    tensor = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
    reference = transform([tensor])[0].tensors[0].permute(1, 2, 0).numpy()
    assert ours.shape == reference.shape == (320, 320, 3)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
