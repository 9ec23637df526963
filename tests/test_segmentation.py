"""Segmentation (torchvision lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large): registry, parity,
conversion, BatchNorm folding, the bilinear resize, heads on another backbone, weights info; all against the
real torchvision modules (random weights, randomized BatchNorm statistics, eval, fp32)."""
import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from torch_reference import randomize_, torch, tv_models, tv_segmentation

import flax_mobilenet as fm
from flax_mobilenet.backbones.mobilenet_v3 import resolve_v3_small
from flax_mobilenet.backbones.segmentation import lraspp_heads, resolve_segmentation
from flax_mobilenet.convert import ConversionError, tensor_mappings
from flax_mobilenet.heads import DenseHeads, LrasppSpec, resize_bilinear
from flax_mobilenet.inference import batchnorm_eps
from flax_mobilenet.preprocessing import preprocess_for
from flax_mobilenet.weights import VOC_LABELS

from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

RELATIVE_TOLERANCE = 1e-4
SIZE = (97, 75)  # odd, non-square: stride 8 -> 13x10, stride 16 -> 7x5 (the ASPP rates 12-36 overhang it)
CASES = {  # case id -> (our name, overrides, reference factory)
    "lraspp": ("lraspp_mobilenet_v3_large", {}, tv_segmentation.lraspp_mobilenet_v3_large),
    "deeplabv3": ("deeplabv3_mobilenet_v3_large", {}, tv_segmentation.deeplabv3_mobilenet_v3_large),
    "deeplabv3-aux": ("deeplabv3_mobilenet_v3_large", {"aux_loss": True}, tv_segmentation.deeplabv3_mobilenet_v3_large),
}
PARAMS = {"lraspp": 3_221_538, "deeplabv3": 11_025_477, "deeplabv3-aux": 11_029_328}


def relative_error(ours, reference):
    return float(np.max(np.abs(np.asarray(ours) - reference)) / np.max(np.abs(reference)))


def nhwc(outputs):
    return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((2, *SIZE, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def references():
    return {case: randomize_(factory(weights=None, weights_backbone=None, num_classes=21, **overrides), seed=i)
            for i, (case, (_, overrides, factory)) in enumerate(CASES.items())}


@pytest.fixture(scope="module")
def expected(references, images):
    with torch.inference_mode():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        return {case: nhwc(reference(x)) for case, reference in references.items()}


@pytest.fixture(scope="module")
def converted(references):
    return {case: fm.convert_state_dict(CASES[case][0], reference.state_dict(), num_classes=21, **CASES[case][1])
            for case, reference in references.items()}


@pytest.fixture(scope="module")
def applied(converted, images):
    """Our logits for each case: one jit per case, shared by the tests."""
    out = {}
    for case, variables in converted.items():
        name, overrides, _ = CASES[case]
        model = fm.create_model(name, **overrides)
        out[case] = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))(variables, images)
    return out


@pytest.mark.parametrize("case", CASES)
def test_logits_match_torchvision(case, applied, expected, parity_report):
    ours, reference = applied[case], expected[case]
    if set(reference) == {"out"}:
        assert not isinstance(ours, dict)  # one head: the logits themselves
        ours = {"out": ours}
    assert set(ours) == set(reference)  # aux_loss: {'out', 'aux'} as torchvision
    for output, logits in reference.items():
        assert ours[output].shape == logits.shape == (2, *SIZE, 21) and ours[output].dtype == np.float32
        error = relative_error(ours[output], logits)
        parity_report[f"{CASES[case][0]}{'-aux_loss' if 'aux' in case else ''} {output} {SIZE[0]}x{SIZE[1]}"] = error
        assert error <= RELATIVE_TOLERANCE, f"{case} {output}: relative error {error:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_param_counts_and_registry(case, references):
    name, overrides, _ = CASES[case]
    model = fm.create_model(name, **overrides)  # num_classes defaults to the reference's 21
    assert model.num_classes == 21
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert ours == sum(p.numel() for p in references[case].parameters()) == PARAMS[case]
    spec = fm.model_spec(name, **overrides)
    assert isinstance(spec.head, DenseHeads) and (spec.bn_eps, spec.bn_momentum) == (1e-3, 0.01)
    assert spec.layers[0].torch_prefix == "backbone.0" and len(spec.layers) == 17
    info = fm.feature_info(name)
    assert (info["features.4"].stride, info["features.4"].channels) == (8, 40)
    assert (info["features.16"].stride, info["features.16"].channels) == (16, 960)
    # the state dict's keys and shapes, head included, are exactly torchvision's
    reference_keys = {k: tuple(v.shape) for k, v in references[case].state_dict().items()
                      if not k.endswith("num_batches_tracked")}
    assert {m.torch_key: m.torch_shape for m in tensor_mappings(spec, 21)} == reference_keys


def test_options_and_headless_backbone(references, images):
    with pytest.raises(TypeError, match="lraspp_mobilenet_v3_large does not take aux_loss"):
        fm.create_model("lraspp_mobilenet_v3_large", aux_loss=True)  # torchvision: NotImplementedError
    backbone = fm.create_model("lraspp_mobilenet_v3_large", num_classes=0)  # no head: the maps the heads take
    state_dict = {k: v for k, v in references["lraspp"].state_dict().items() if k.startswith("backbone.")}
    variables = fm.convert_state_dict("lraspp_mobilenet_v3_large", state_dict, num_classes=0)
    maps = jax.eval_shape(backbone.apply, variables, images)
    assert {k: v.shape for k, v in maps.items()} == {"features.4": (2, 13, 10, 40), "features.16": (2, 7, 5, 960)}


def test_conversion_errors_are_named(references):
    state_dict = {k: v.clone() for k, v in references["lraspp"].state_dict().items()}
    broken = dict(state_dict)
    del broken["classifier.scale.1.weight"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  classifier.scale.1.weight"):
        fm.convert_state_dict("lraspp_mobilenet_v3_large", broken, num_classes=21)
    broken = dict(state_dict, **{"classifier.extra.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"1 unexpected keys:\n  classifier.extra.weight"):
        fm.convert_state_dict("lraspp_mobilenet_v3_large", broken, num_classes=21)
    with pytest.raises(ConversionError, match=r"classes, not num_classes=10; pass num_classes=21"):
        fm.convert_state_dict("lraspp_mobilenet_v3_large", state_dict, num_classes=10)
    # torchvision's published DeepLabV3 weights carry the aux classifier: the message names the option
    with pytest.raises(ConversionError, match=r"deeplabv3_mobilenet_v3_large \(aux_loss=True\) checkpoint"):
        fm.convert_state_dict("deeplabv3_mobilenet_v3_large", references["deeplabv3-aux"].state_dict())
    with pytest.raises(ConversionError, match=r"looks like a lraspp_mobilenet_v3_large checkpoint"):
        fm.convert_state_dict("deeplabv3_mobilenet_v3_large", state_dict)
    classifier = tv_models.mobilenet_v3_large(dilated=True).state_dict()
    with pytest.raises(ConversionError, match=r"looks like a mobilenet_v3_large checkpoint"):
        fm.convert_state_dict("lraspp_mobilenet_v3_large", classifier)


@pytest.mark.parametrize("case", CASES)
def test_each_norm_folds_with_its_own_eps(case):
    eps = batchnorm_eps(fm.create_model(CASES[case][0], **CASES[case][1]))
    head_norms = {path: e for path, e in eps.items() if "classifier" in path[0]}
    assert head_norms and set(head_norms.values()) == {1e-5}  # the heads' own (PyTorch default) eps
    assert {e for path, e in eps.items() if path[0].startswith("features_")} == {1e-3}  # the backbone's


def test_compile_inference_equals_apply(converted, images, applied):
    """BatchNorm folded in the backbone and both heads (the ASPP pooling branch's included), dict output."""
    name, overrides, _ = CASES["deeplabv3-aux"]
    with jax.default_matmul_precision("highest"):
        predict = fm.compile_inference(name, converted["deeplabv3-aux"], batch_size=2, image_size=SIZE, **overrides)
        ours = predict(images)
    assert set(ours) == {"out", "aux"}
    for output, expected in applied["deeplabv3-aux"].items():
        assert np.abs(np.asarray(ours[output]) - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("in_size,out_size", [((7, 5), (13, 10)), ((13, 10), (97, 75)), ((1, 1), (7, 5)),
                                              ((9, 12), (4, 5)), ((6, 6), (6, 11))])
def test_resize_bilinear_is_torch_interpolate(in_size, out_size):
    """Values and gradients (the resize primitive's transpose rule against torch's backward)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *in_size, 4), dtype=np.float32)
    cotangent = rng.standard_normal((2, *out_size, 4), dtype=np.float32)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    resized = torch.nn.functional.interpolate(x_torch, size=out_size, mode="bilinear", align_corners=False)
    resized.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy()))
    expected = resized.detach().numpy().transpose(0, 2, 3, 1)
    ours, vjp = jax.vjp(lambda x: resize_bilinear(x, out_size), x)
    # a few float32 ulps: PyTorch's vectorized kernel rounds its multiply-adds differently (FMA)
    assert ours.shape == expected.shape and np.abs(ours - expected).max() <= 2e-6 * np.abs(expected).max()
    expected_grad = x_torch.grad.numpy().transpose(0, 2, 3, 1)
    (grad,) = vjp(cotangent)
    assert np.abs(grad - expected_grad).max() <= 2e-6 * np.abs(expected_grad).max()
    if all(o >= i for o, i in zip(out_size, in_size)):  # jax.image.resize agrees when upsampling only
        upsampled = jax.image.resize(x, (2, *out_size, 4), "bilinear")
        assert np.abs(np.asarray(upsampled) - expected).max() <= 1e-5


def test_lraspp_head_on_mobilenet_v3_small_taps():
    """The head reads its channels from any backbone's feature_info; torchvision's own builder agrees."""
    spec = resolve_segmentation(resolve_v3_small, lraspp_heads, "torchvision", dilated=True)
    head = spec.head.heads[0][1]
    assert head == LrasppSpec(24, 576, "features.2", "features.12")
    assert head.taps == {"low": "features.2", "high": "features.12"}
    reference = randomize_(_lraspp_mobilenetv3(tv_models.mobilenet_v3_small(dilated=True), 5), seed=7)
    variables = {"params": {}, "batch_stats": {}}
    state_dict = reference.state_dict()
    assert {m.torch_key for m in tensor_mappings(spec, 5)} == {k for k in state_dict
                                                               if not k.endswith("num_batches_tracked")}
    for m in tensor_mappings(spec, 5):
        node = variables[m.collection]
        for part in m.flax_path[:-1]:
            node = node.setdefault(part, {})
        node[m.flax_path[-1]] = m.to_flax(state_dict[m.torch_key].numpy())
    images = np.random.default_rng(4).standard_normal((1, 64, 48, 3), dtype=np.float32)
    ours = jax.jit(fm.MobileNet(spec, num_classes=5).apply)(variables, images)
    with torch.inference_mode():
        expected = nhwc(reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())))["out"]
    assert ours.shape == expected.shape == (1, 64, 48, 5)
    assert relative_error(ours, expected) <= RELATIVE_TOLERANCE


@pytest.mark.parametrize("name,weights", [
    ("lraspp_mobilenet_v3_large", tv_segmentation.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
    ("deeplabv3_mobilenet_v3_large", tv_segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1),
])
def test_weights_info_is_torchvisions_segmentation_transform(name, weights):
    info, transform = fm.weights_info(name), weights.transforms()
    assert info.reference.split()[1] == f"{type(weights).__name__}.{weights.name}"
    assert [info.resize_size] == transform.resize_size == [520] and not info.center_crop
    assert info.interpolation == transform.interpolation.value
    assert (list(info.mean), list(info.std)) == (transform.mean, transform.std)
    assert info.labels == "voc" and list(VOC_LABELS) == weights.meta["categories"]
    photo = Image.fromarray(skimage_data.chelsea())
    expected = transform(photo).numpy().transpose(1, 2, 0)  # resized whole, not cropped
    ours = preprocess_for(photo, info)
    assert ours.shape == expected.shape and np.abs(ours - expected).max() < 1e-5


def test_lraspp_mobilenet_v2_is_torchvisions_builder_on_a_dilated_mobilenet_v2(parity_report):
    """`lraspp_mobilenet_v2`: torchvision's LR-ASPP builder (it takes any backbone whose blocks mark `_is_cn`) on its
    MobileNetV2, dilated as torchvision dilates V3: from the last strided stage on, stride 1 and dilation 2."""
    backbone = tv_models.mobilenet_v2()
    for index in range(14, 18):  # features.14 strides to 1/32; it and the blocks after it are dilated instead
        depthwise = backbone.features[index].conv[1][0]
        depthwise.stride, depthwise.dilation, depthwise.padding = (1, 1), (2, 2), (2, 2)
    reference = randomize_(_lraspp_mobilenetv3(backbone, 5), seed=8)
    variables = fm.convert_state_dict("lraspp_mobilenet_v2", reference.state_dict(), num_classes=5)
    assert fm.feature_info("lraspp_mobilenet_v2")["features.18"].stride == 16
    images = np.random.default_rng(5).standard_normal((2, *SIZE, 3), dtype=np.float32)
    ours = jax.jit(fm.create_model("lraspp_mobilenet_v2", num_classes=5).apply)(variables, images)
    with torch.inference_mode():
        expected = nhwc(reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())))["out"]
    assert ours.shape == expected.shape == (2, *SIZE, 5)
    parity_report["lraspp_mobilenet_v2 (dilated) vs torchvision's builder"] = error = relative_error(ours, expected)
    assert error <= RELATIVE_TOLERANCE
