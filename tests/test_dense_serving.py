"""Serving the segmentation and detection models: exports (per-pixel logits; detections with the post-processing
inside for StableHLO and ONNX, raw head outputs with anchors for TFLite), compile_inference and predict.py, each
equal to the model in JAX."""
import collections
import json

import jax
import numpy as np
import pytest

import flax_mobilenet as fm
from flax_mobilenet.export import ANCHORS_FILE, export_model, load_exported
from flax_mobilenet.inference import folded_model

SEG_SIZE, DET_SIZE, CLASSES = 64, 128, 6


def random_variables(name, size, seed=0, **overrides):
    """Random weights and non-trivial BatchNorm statistics (variances large enough that activations stay in a
    range float32 reproduces across runtimes; with variances near 1 the deep SSDLite amplifies rounding to
    ~1e-4); a detector's class logits spread wide, so that its scores are far apart (no near-ties for the
    runtimes to order differently)."""
    model = fm.create_model(name, num_classes=CLASSES, **overrides)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        key, shape = jax.tree_util.keystr(path), leaf.shape
        if "var" in key:
            return (5.0 + 10.0 * rng.random(shape)).astype(np.float32)
        if len(shape) == 1:
            return ((1.0 if "scale" in key else 0.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        scale = 8.0 if "classification_head" in key and "project" in key else 1.0
        return (scale * rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))).astype(np.float32)
    return model, jax.tree_util.tree_map_with_path(fill, shapes)


def images(batch, size, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, size, size, 3), dtype=np.float32)


def relative(got, expected):
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def segmentation():
    model, variables = random_variables("lraspp_mobilenet_v3_large", SEG_SIZE)
    x = images(2, SEG_SIZE)
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
    return variables, x, expected


@pytest.mark.parametrize("format", ["stablehlo", pytest.param("onnx", marks=pytest.mark.export),
                                    pytest.param("tflite", marks=pytest.mark.export)])
def test_segmentation_exports_per_pixel_logits(segmentation, format, tmp_path):
    variables, x, expected = segmentation
    export_model("lraspp_mobilenet_v3_large", variables, tmp_path, image_size=SEG_SIZE, format=format,
                 num_classes=CLASSES)
    contract = json.loads((tmp_path / "export.json").read_text())
    assert contract["task"] == "segmentation" and contract["labels"] == "voc"
    (output,) = contract["outputs"]
    assert output["name"] == "logits" and output["shape"][1:] == [SEG_SIZE, SEG_SIZE, CLASSES]
    run = load_exported(tmp_path)
    got = np.concatenate([run(x[i:i + 1]) for i in range(2)]) if format == "tflite" else run(x)
    assert got.shape == (2, SEG_SIZE, SEG_SIZE, CLASSES) and relative(got, expected) <= 1e-4
    if format == "onnx":  # the two bilinear upsamplings as ONNX Resize, not their XLA form's gathers
        import onnx
        graph = onnx.load(tmp_path / "model.onnx").graph
        shapes = {name for node in graph.node if node.op_type == "Shape" for name in node.output}
        assert collections.Counter(node.op_type for node in graph.node)["Resize"] == 2
        assert all(node.input[0] in shapes for node in graph.node if node.op_type == "Gather")  # only of shapes


def test_deeplabv3_exports_its_main_head_only(tmp_path):
    name = "deeplabv3_mobilenet_v3_large"
    model, variables = random_variables(name, SEG_SIZE, aux_loss=True)
    x = images(1, SEG_SIZE)
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x)["out"])(variables, x))
    export_model(name, variables, tmp_path, image_size=SEG_SIZE, num_classes=CLASSES, aux_loss=True)
    assert [o["name"] for o in json.loads((tmp_path / "export.json").read_text())["outputs"]] == ["logits"]
    assert relative(load_exported(tmp_path)(x), expected) <= 1e-4


@pytest.fixture(scope="module")
def detector():
    name = "ssdlite320_mobilenet_v3_large"
    model, variables = random_variables(name, DET_SIZE)
    x = images(2, DET_SIZE, seed=2)
    # The export's own reference: the BatchNorm-folded model (folding is tested in test_inference.py).
    folded_net, folded = folded_model(name, variables, num_classes=CLASSES)
    with jax.default_matmul_precision("highest"):
        raw = jax.device_get(jax.jit(lambda v, x: folded_net.apply(v, x))(folded, x))
        found = jax.device_get(jax.jit(folded_net.detect)(folded, x))
    assert all(20 < int(n) <= 300 for n in found.num_valid)  # a real test of the post-processing, not an empty one
    return name, model, variables, x, raw, found


def assert_same_detections(got, found):
    """The same detections; among exactly tied scores (random weights give some: spatially constant deep maps)
    NMS may keep either box, and a runtime may order them either way, so tied rows are compared by score and
    label only."""
    for image in range(len(found.num_valid)):
        _assert_same_image_detections(got, found, image)


def _assert_same_image_detections(got, found, image):
    count = int(found.num_valid[image])
    assert int(got["num_valid"][image]) == count
    boxes, scores, labels = (np.asarray(got[k][image, :count]) for k in ("boxes", "scores", "labels"))
    want_boxes, want_scores, want_labels = (np.asarray(a[image, :count]) for a in (found.boxes, found.scores,
                                                                                    found.labels))
    np.testing.assert_allclose(np.sort(scores), np.sort(want_scores), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.sort(labels), np.sort(want_labels))
    values, counts = np.unique(np.round(want_scores, 5), return_counts=True)
    unique = np.isin(np.round(want_scores, 5), values[counts == 1])
    assert unique.sum() >= count // 2  # most rows are compared box by box
    for row in np.flatnonzero(unique):
        candidates = np.flatnonzero(np.abs(scores - want_scores[row]) <= 1e-4 * want_scores[row])
        assert any(labels[c] == want_labels[row] and np.abs(boxes[c] - want_boxes[row]).max() <= 1e-4 * DET_SIZE
                   for c in candidates), (row, want_scores[row], want_labels[row], want_boxes[row])


@pytest.mark.parametrize("format", ["stablehlo", pytest.param("onnx", marks=pytest.mark.export)])
def test_detection_exports_detections_with_the_postprocessing_inside(detector, format, tmp_path):
    name, _, variables, x, raw, found = detector
    export_model(name, variables, tmp_path, image_size=DET_SIZE, format=format, num_classes=CLASSES)
    contract = json.loads((tmp_path / "export.json").read_text())
    batch = "batch"
    assert [(o["name"], o["shape"]) for o in contract["outputs"]] == [
        ("boxes", [batch, 300, 4]), ("scores", [batch, 300]), ("labels", [batch, 300]), ("num_valid", [batch]),
        ("bbox_regression", [batch, 522, 4]), ("cls_logits", [batch, 522, CLASSES])]
    if format == "onnx":  # the NMS is ONNX's NonMaxSuppression, not the traced loop ONNX Runtime runs slowly
        import onnx
        ops = {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
        assert "NonMaxSuppression" in ops and "Loop" not in ops
    got = load_exported(tmp_path)(x)
    for key in ("bbox_regression", "cls_logits"):
        assert relative(got[key], raw[key]) <= 1e-4
    assert_same_detections(got, found)


def overlapping_boxes(problems=6, t=48, seed=3):
    """NMS problems (problems, t) with heavy overlaps: half the boxes on a 0..6 integer grid (duplicates, zero
    areas, IoUs of exactly 1/2, 1/3, ...), half jittered copies of one box per problem (IoUs around 0.55 in
    float32); about 20% invalid, and none valid in the last problem."""
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 4, (problems, t, 2))
    grid = np.concatenate([corners, corners + rng.integers(0, 4, (problems, t, 2))], -1).astype(np.float32)
    start, size = rng.uniform(0, 50, (problems, 1, 2)), rng.uniform(10, 20, (problems, 1, 2))
    jittered = np.concatenate([start, start + size], -1) + rng.normal(0, 2, (problems, t, 4))
    jittered = np.concatenate([np.minimum(jittered[..., :2], jittered[..., 2:]),
                               np.maximum(jittered[..., :2], jittered[..., 2:])], -1).astype(np.float32)
    boxes = np.where(rng.random((problems, t, 1)) < 0.5, grid, jittered)
    valid = rng.random((problems, t)) < 0.8
    valid[-1] = False
    return boxes, valid


@pytest.mark.export
@pytest.mark.parametrize("iou_threshold", [0.0, 0.5, 0.55, 0.7])
def test_onnx_nms_keeps_exactly_what_our_nms_keeps(iou_threshold):
    """The NonMaxSuppression lowering through the ONNX export's conversion, bit for bit against `solve_greedy`,
    at IoU thresholds that some pairs equal exactly (0, 0.5) and on duplicates (ties of every kind)."""
    from flax_mobilenet.detection.boxes import box_iou
    from flax_mobilenet.detection.nms import solve_greedy, suppression_matrix
    from flax_mobilenet.export import onnx as onnx_export
    from flax_mobilenet.export.onnx_nms import nms_keep
    boxes, valid = overlapping_boxes()
    t = valid.shape[1]
    iou = np.asarray(box_iou(boxes, boxes))
    pairs = valid[:, :, None] & valid[:, None, :] & ~np.eye(t, dtype=bool)
    assert (pairs & (iou == 1)).any() and (pairs & (iou == 0.5)).any() and (pairs & (iou > 0.55) & (iou < 0.7)).any()
    data, _ = onnx_export.convert(lambda x: (nms_keep(x[..., :4], x[..., 4] > 0, iou_threshold),), (None, t, 5),
                                  [("keep", (t,))])
    run = onnx_export.load(data, ["keep"])[0]
    inputs = np.concatenate([boxes, valid[..., None]], -1).astype(np.float32)
    want = np.asarray(solve_greedy(suppression_matrix(boxes, iou_threshold, valid), valid))
    assert 0 < want.sum() < valid.sum()  # some boxes suppressed, some kept
    np.testing.assert_array_equal(run(inputs)["keep"], want)
    assert not run(inputs[-1:])["keep"].any()  # another batch size, nothing to select


@pytest.mark.export
def test_detection_exports_raw_outputs_and_anchors_to_tflite(detector, tmp_path):
    name, model, variables, x, raw, _ = detector
    export_model(name, variables, tmp_path, image_size=DET_SIZE, format="tflite", num_classes=CLASSES,
                 postprocess=False)
    np.testing.assert_array_equal(np.load(tmp_path / ANCHORS_FILE), model.anchors((DET_SIZE, DET_SIZE)))
    got = load_exported(tmp_path)(x[:1])  # TFLite: a fixed batch of 1
    assert sorted(got) == ["bbox_regression", "cls_logits"]
    for key in got:
        assert relative(got[key], raw[key][:1]) <= 1e-4


def run_predict(capsys, *argv):
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("predict_cli", root / "predict.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


CAT = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "cat.jpg"


def test_predict_draws_a_segmentation_mask_and_reports_class_fractions(segmentation, tmp_path, capsys):
    from PIL import Image

    from flax_mobilenet.checkpoint import eval_transform
    from flax_mobilenet.preprocessing import load_image, preprocess_for
    variables = segmentation[0]
    name = "lraspp_mobilenet_v3_large"
    fm.save_variables(tmp_path / "ckpt", variables, {"model": name, "num_classes": CLASSES})
    results = json.loads(run_predict(capsys, CAT, "--checkpoint", tmp_path / "ckpt", "--image-size", SEG_SIZE,
                                     "--output-dir", tmp_path / "pictures", "--json"))
    (entry,) = results
    assert Image.open(entry["output"]).size == Image.open(CAT).size
    x = preprocess_for(load_image(CAT), eval_transform({"model": name}).at_size(SEG_SIZE))
    classes = np.asarray(fm.create_model(name, num_classes=CLASSES).apply(variables, x[None]))[0].argmax(-1)
    expected = {int(c): n / classes.size for c, n in zip(*np.unique(classes, return_counts=True))}
    assert {c["index"]: c["fraction"] for c in entry["classes"]} == pytest.approx(expected, abs=2e-4)


def test_predict_gives_coco_style_boxes_in_image_pixels(detector, tmp_path, capsys):
    from PIL import Image

    from flax_mobilenet.checkpoint import eval_transform
    from flax_mobilenet.inference import compile_inference
    from flax_mobilenet.preprocessing import load_image, preprocess_for
    name, _, variables, _, _, _ = detector
    fm.save_variables(tmp_path / "ckpt", variables, {"model": name, "num_classes": CLASSES})
    results = json.loads(run_predict(capsys, CAT, "--checkpoint", tmp_path / "ckpt", "--image-size", DET_SIZE,
                                     "--min-score", 0.5, "--json"))
    (entry,) = results
    x = preprocess_for(load_image(CAT), eval_transform({"model": name}).at_size(DET_SIZE))
    raw = compile_inference(name, variables, 1, DET_SIZE, num_classes=CLASSES)(x[None])
    found = fm.create_model(name, num_classes=CLASSES).postprocessor((DET_SIZE, DET_SIZE))(raw)
    scores = np.asarray(found.scores[0, :int(found.num_valid[0])])
    assert len(entry["detections"]) == int((scores >= 0.5).sum()) > 0
    width, height = Image.open(CAT).size
    for detection, box, label in zip(entry["detections"], np.asarray(found.boxes[0]), np.asarray(found.labels[0])):
        x0, y0, w, h = detection["bbox"]
        expected = box * np.array([width, height, width, height]) / DET_SIZE
        assert np.allclose([x0, y0, x0 + w, y0 + h], expected, atol=0.2) and detection["category_id"] == label
        assert 0 <= x0 <= x0 + w <= width + 0.1 and 0 <= y0 <= y0 + h <= height + 0.1
