"""Serving the YOLO detectors: exports (StableHLO and ONNX with the NMS inside, TFLite raw predictions),
compile_inference, and predict.py's letterboxed input with boxes mapped back to the photo, each equal to the
model in JAX."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

import flax_mobilenet as fm
from flax_mobilenet.export import export_model, load_exported
from flax_mobilenet.inference import compile_inference
from flax_mobilenet.preprocessing import detection_input, letterbox, load_image, scale_boxes_back

SIZE, CLASSES = 128, 5
CAT = "examples/cat.jpg"


def random_variables(name, seed=0):
    """Random weights and BatchNorm statistics; class biases spread around 0, so that scores are far apart and
    some pass predict's 0.25 (a fresh head's prior bias, about -10, would leave nothing to detect)."""
    model = fm.create_model(name, num_classes=CLASSES)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.float32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        key, shape = jax.tree_util.keystr(path), leaf.shape
        if "var" in key:
            return (1.0 + rng.random(shape)).astype(np.float32)
        if "class_" in key and "predict" in key and "bias" in key:
            return (2.0 * rng.standard_normal(shape)).astype(np.float32)
        if len(shape) == 1:
            return ((1.0 if "scale" in key else 0.0) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (rng.standard_normal(shape) * np.sqrt(1 / np.prod(shape[:-1]))).astype(np.float32)
    return model, jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def detector():
    model, variables = random_variables("yolov8n")
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        predictions = np.asarray(jax.jit(lambda v, x: model.apply(v, x)["predictions"])(variables, x))
        found = jax.jit(model.detect)(variables, x)
    assert int(found.num_valid.min()) > 3  # something to compare
    return model, variables, x, predictions, found


def relative(got, expected):
    return float(np.abs(np.asarray(got, np.float64) - expected).max() / np.abs(expected).max())


def assert_same_detections(got, found):
    for image in range(len(found.num_valid)):
        count = int(found.num_valid[image])
        assert int(got["num_valid"][image]) == count
        np.testing.assert_allclose(got["scores"][image, :count], found.scores[image, :count], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got["labels"][image, :count], found.labels[image, :count])
        np.testing.assert_allclose(got["boxes"][image, :count], found.boxes[image, :count], atol=1e-3)


@pytest.mark.parametrize("format", ["stablehlo", pytest.param("onnx", marks=pytest.mark.export)])
def test_exports_detections_with_the_nms_inside(detector, format, tmp_path):
    model, variables, x, predictions, found = detector
    export_model("yolov8n", variables, tmp_path, image_size=SIZE, format=format, num_classes=CLASSES)
    contract = json.loads((tmp_path / "export.json").read_text())
    anchors = (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2
    assert [(o["name"], o["shape"]) for o in contract["outputs"]] == [
        ("boxes", ["batch", 300, 4]), ("scores", ["batch", 300]), ("labels", ["batch", 300]), ("num_valid", ["batch"]),
        ("predictions", ["batch", anchors, 4 + CLASSES])]
    assert contract["input"]["preprocessing"].startswith("letterbox") and contract["labels"] == "coco80"
    if format == "onnx":
        import onnx
        ops = {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
        assert "NonMaxSuppression" in ops and "Loop" not in ops
    got = load_exported(tmp_path)(x)
    assert relative(got["predictions"], predictions) <= 1e-4
    # the NMS inside keeps what ours keeps from the same predictions; against the JAX model's own detections (1e-6
    # away) a near tie can flip (two boxes' scores 2e-6 apart, IoU 0.68, on jax 0.12 on an AVX-512 CPU)
    assert_same_detections(got, jax.jit(model.postprocessor((SIZE, SIZE)))({"predictions": got["predictions"]}))
    assert abs(got["num_valid"] - found.num_valid).max() <= 2


@pytest.mark.export
def test_tflite_exports_the_raw_predictions(detector, tmp_path):
    _, variables, x, predictions, _ = detector
    with pytest.raises(ValueError, match="raw-outputs"):
        export_model("yolov8n", variables, tmp_path, image_size=SIZE, format="tflite", num_classes=CLASSES)
    export_model("yolov8n", variables, tmp_path, image_size=SIZE, format="tflite", num_classes=CLASSES,
                 postprocess=False)
    assert not list(tmp_path.glob("*.npy"))  # decoded boxes: nothing to ship beside them
    got = load_exported(tmp_path)(x[:1])
    assert relative(got["predictions"], predictions[:1]) <= 1e-4


def test_compile_inference_serves_the_predictions(detector):
    _, variables, x, predictions, _ = detector
    served = compile_inference("yolov8n", variables, 2, SIZE, num_classes=CLASSES)(x)
    assert relative(served["predictions"], predictions) <= 1e-4


def run_predict(capsys, *args):
    import predict
    assert predict.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_predict_letterboxes_and_maps_boxes_back_to_the_photo(detector, tmp_path, capsys):
    model, variables, _, _, _ = detector
    fm.save_variables(tmp_path / "ckpt", variables, {"model": "yolov8n", "num_classes": CLASSES})
    (entry,) = json.loads(run_predict(capsys, CAT, "--checkpoint", tmp_path / "ckpt", "--image-size", SIZE,
                                      "--min-score", 0.25, "--json", "--output-dir", tmp_path / "pictures"))
    photo = load_image(CAT)
    pixels, info = letterbox(photo, SIZE, auto=True)  # the predictor's minimal stride-32 rectangle
    assert pixels.shape[:2] != (SIZE, SIZE) and max(pixels.shape[:2]) == SIZE
    x, _ = detection_input(photo, fm.weights_info("yolov8n").at_size(SIZE), rect=True)
    found = jax.jit(model.detect)(variables, x[None])
    keep = np.asarray(found.scores[0, :int(found.num_valid[0])]) >= 0.25
    assert len(entry["detections"]) == int(keep.sum()) > 0
    expected = scale_boxes_back(np.asarray(found.boxes[0, :len(keep)])[keep], info)
    labels = np.asarray(found.labels[0, :len(keep)])[keep]
    for detection, box, label in zip(entry["detections"], expected, labels):
        x0, y0, w, h = detection["bbox"]
        assert np.allclose([x0, y0, x0 + w, y0 + h], box, atol=0.1) and detection["category_id"] == label
        assert detection["label"] == str(label)  # 5 classes: not the 80 COCO names, so numbers
        assert 0 <= x0 <= x0 + w <= photo.width + 0.1 and 0 <= y0 <= y0 + h <= photo.height + 0.1
    assert Image.open(entry["output"]).size == photo.size


def test_a_yolo_head_on_an_imagenet_backbone_takes_the_classifier_layers():
    """`init_from` a converted classifier: its features_N layers load into yolov8n(backbone=...), the neck and the
    head stay fresh."""
    from flax_mobilenet.training.checkpoints import merge_backbone
    x = np.zeros((1, 64, 64, 3), np.float32)
    classifier = jax.jit(fm.create_model("mobilenet_v3_small").init)(jax.random.key(1), x)  # jit: 80 s -> seconds
    fresh = jax.jit(fm.create_model("yolov8n", backbone="mobilenet_v3_small", num_classes=CLASSES).init)(
        jax.random.key(0), x)
    merged, kept = merge_backbone(fresh, classifier)
    assert set(kept) == {f"neck_{i}" for i in (0, 3, 6, 7, 9, 10, 12)} | {"model_14"}  # SPPF, C2f/Conv rows, Detect
    np.testing.assert_array_equal(merged["params"]["features_3"]["expand"]["conv"]["kernel"],
                                  classifier["params"]["features_3"]["expand"]["conv"]["kernel"])
