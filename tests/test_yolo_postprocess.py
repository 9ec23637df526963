"""YOLO post-processing (detection/yolo_postprocess.py) against ultralytics' and yolov5's own `non_max_suppression`
on the same raw outputs: same detections (boxes, scores, classes, order), predict and val settings, batch 2, jitted."""
import sys

import jax
import numpy as np
import pytest
import torch_reference  # noqa: F401  (first: stubs torchvision, whose compiled ops are missing here)
import torch
import torchvision.ops

from flax_mobilenet.detection.nms import greedy_keep
from flax_mobilenet.detection.yolo_postprocess import (MAX_NMS, YOLO_PRESETS, YOLOV5_PRESETS, yolo_postprocess,
                                                       yolov5_postprocess)

import ultralytics.utils.nms as ultralytics_nms  # noqa: E402


def torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """A pure stand-in for `torchvision.ops.nms` (its compiled op is missing here), written after its CPU kernel:
    visit by decreasing score, a kept box suppresses every later box whose float32 IoU, inter / (area_i + area_j -
    inter), exceeds the threshold as a double.  Returns the kept indices, best first."""
    b = boxes.detach().float().numpy()
    order = np.argsort(-scores.detach().numpy(), kind="stable")
    x1, y1, x2, y2 = (b[order, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[i + 1:]) - np.maximum(x1[i], x1[i + 1:]), np.float32(0))
        h = np.maximum(np.minimum(y2[i], y2[i + 1:]) - np.maximum(y1[i], y1[i + 1:]), np.float32(0))
        inter = w * h
        iou = inter / (areas[i] + areas[i + 1:] - inter)
        suppressed[i + 1:] |= iou.astype(np.float64) > iou_threshold
    return torch.from_numpy(order[keep].astype(np.int64))


@pytest.fixture
def tv_nms(monkeypatch):
    monkeypatch.setattr(torchvision.ops, "nms", torchvision_nms)


def predictions(seed: int, n: int = 2, anchors: int = 800, nc: int = 4, extra: int = 0, objectness: bool = False,
                size: int = 640) -> np.ndarray:
    """Raw outputs (n, anchors, 4 [+ 1] + nc + extra) shaped like a trained head's: anchors jittered around 12 objects
    per image (so boxes overlap and NMS has work), each object with a dominant class scoring 0.05..0.95, the other
    classes low (0..0.01, about half above the val threshold); 10% background anchors anywhere.  All scores in an
    image distinct (for yolov5 the products objectness * class too): the references' sort is unstable on ties."""
    rng = np.random.default_rng(seed)
    objects = 12
    centres = rng.uniform(30, size - 30, (n, objects, 2))
    extents = rng.uniform(12, 260, (n, objects, 2))
    owner = rng.integers(0, objects, (n, anchors))
    classes = rng.integers(0, nc, (n, objects))
    cxcy = np.take_along_axis(centres, owner[..., None], 1) + rng.normal(0, 5, (n, anchors, 2))
    wh = np.take_along_axis(extents, owner[..., None], 1) * rng.uniform(0.85, 1.2, (n, anchors, 2))
    background = rng.random((n, anchors)) < 0.1
    cxcy[background] = rng.uniform(0, size, (background.sum(), 2))
    for _ in range(100):
        scores = 0.01 * rng.random((n, anchors, nc)) ** 3
        dominant = np.take_along_axis(classes, owner, 1)
        np.put_along_axis(scores, dominant[..., None], 0.05 + 0.9 * rng.random((n, anchors, 1)), axis=2)
        scores[background] *= 0.02
        scores = scores.astype(np.float32)
        obj = (0.2 + 0.8 * rng.random((n, anchors))).astype(np.float32)
        final = scores * obj[..., None] if objectness else scores
        if all(len(np.unique(f)) == f.size for f in final):
            break
    else:
        raise AssertionError("could not draw distinct scores")
    parts = [cxcy, wh] + ([obj[..., None]] if objectness else []) + [scores]
    if extra:
        parts.append(rng.normal(size=(n, anchors, extra)))
    return np.concatenate(parts, -1).astype(np.float32)


def assert_same(ours, reference, exact_count=True):
    """Our `Detections` against the references' per-image (k, 6) rows (xyxy, conf, cls), in order."""
    for image, rows in enumerate(reference):
        rows = rows.numpy()
        count = int(ours.num_valid[image])
        if exact_count:
            assert count == len(rows), (image, count, len(rows))
        else:
            assert count <= len(rows)
        rows = rows[:count]
        np.testing.assert_allclose(np.asarray(ours.boxes[image, :count]), rows[:, :4], rtol=0, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(ours.scores[image, :count]), rows[:, 4])
        np.testing.assert_array_equal(np.asarray(ours.labels[image, :count]), rows[:, 5].astype(np.int32))
        # padding rows are zero
        assert not np.asarray(ours.boxes[image, count:]).any() and not np.asarray(ours.scores[image, count:]).any()
        assert not np.asarray(ours.labels[image, count:]).any()


def ultralytics_reference(pred: np.ndarray, **kwargs):
    x = torch.from_numpy(np.ascontiguousarray(pred.transpose(0, 2, 1)))  # its layout: (N, 4 + nc, A)
    return ultralytics_nms.non_max_suppression(x, max_time_img=1e3, **kwargs)  # no wall-clock cut-off


@pytest.mark.parametrize("preset", ["predict", "val"])
def test_matches_ultralytics(preset, tv_nms):
    pred = predictions(0)
    s = YOLO_PRESETS[preset]
    reference = ultralytics_reference(pred, conf_thres=s["conf_threshold"], iou_thres=s["iou_threshold"],
                                      multi_label=s["multi_label"], max_det=s["max_det"])
    for image in range(2):  # every candidate fits in K: exact, whatever num_valid
        pairs = pred[image, :, 4:] > np.float32(s["conf_threshold"])
        assert (pairs.sum() if s["multi_label"] else pairs.any(-1).sum()) <= 3000
    ours = jax.jit(lambda p: yolo_postprocess(p, **s))(pred)
    assert_same(ours, reference)
    assert 20 < int(ours.num_valid.min())
    assert len(np.unique(np.asarray(ours.labels[0, :int(ours.num_valid[0])]))) > 1
    if preset == "val":  # multi-label: the same box under two classes
        boxes = np.asarray(ours.boxes[0, :int(ours.num_valid[0])])
        assert len(np.unique(boxes, axis=0)) < len(boxes)


def test_matches_ultralytics_own_torch_nms(monkeypatch):
    """Without torchvision imported, ultralytics runs its own `TorchNMS.nms`: the same detections."""
    monkeypatch.delitem(sys.modules, "torchvision")
    pred = predictions(1, anchors=500)
    s = YOLO_PRESETS["predict"]
    reference = ultralytics_reference(pred, conf_thres=s["conf_threshold"], iou_thres=s["iou_threshold"],
                                      max_det=s["max_det"])
    assert_same(yolo_postprocess(pred, **s), reference)


def test_options_agnostic_classes_extra_channels(tv_nms):
    pred = predictions(2, anchors=500, nc=5, extra=3)
    kwargs = dict(conf_thres=0.2, iou_thres=0.5, max_det=50)
    reference = ultralytics_reference(pred, agnostic=True, nc=5, **kwargs)
    assert_same(yolo_postprocess(pred, 0.2, 0.5, max_det=50, agnostic=True, num_classes=5), reference)
    reference = ultralytics_reference(pred, classes=[1, 3], multi_label=True, nc=5, **kwargs)
    ours = yolo_postprocess(pred, 0.2, 0.5, multi_label=True, max_det=50, classes=[1, 3], num_classes=5)
    assert set(np.asarray(ours.labels[0, :int(ours.num_valid[0])]).tolist()) == {1, 3}
    assert_same(ours, reference)


@pytest.mark.parametrize("preset", ["predict", "val"])
def test_matches_yolov5(preset, tv_nms):
    import yolov5.utils.general as general
    pred = predictions(3, nc=5, objectness=True)
    s = YOLOV5_PRESETS[preset]
    reference = general.non_max_suppression(torch.from_numpy(pred), s["conf_threshold"], s["iou_threshold"],
                                            multi_label=s["multi_label"], max_det=s["max_det"])
    ours = jax.jit(lambda p: yolov5_postprocess(p, **s))(pred)
    assert_same(ours, reference)
    assert 10 < int(ours.num_valid.min())


def test_top_k_candidates_give_the_reference_prefix(tv_nms):
    """K below the candidate count: our detections are the reference's first num_valid ones, and all of them when
    max_det boxes survive within the top K (the documented exactness condition)."""
    pred = predictions(4)
    s = YOLO_PRESETS["val"]
    reference = ultralytics_reference(pred, conf_thres=s["conf_threshold"], iou_thres=s["iou_threshold"],
                                      multi_label=True, max_det=100)
    truncated = yolo_postprocess(pred, **{**s, "max_det": 100}, max_candidates=150)
    assert (np.asarray(truncated.num_valid) < 100).all()
    assert_same(truncated, reference, exact_count=False)
    enough = yolo_postprocess(pred, **{**s, "max_det": 100}, max_candidates=1000)
    assert (np.asarray(enough.num_valid) == 100).all()
    assert_same(enough, reference)
    assert yolo_postprocess(pred, max_candidates=10 ** 9).scores.shape == (2, 300)  # K is capped at MAX_NMS
    assert MAX_NMS == 30000


def test_nms_method_callable_and_fixed_point(tv_nms):
    pred = predictions(5)
    s = YOLO_PRESETS["val"]
    expected = yolo_postprocess(pred, **s, max_candidates=1200)
    calls = []

    def recording_keep(boxes, valid, iou_threshold):
        calls.append((boxes.shape, valid.shape, iou_threshold))
        return greedy_keep(boxes, valid, iou_threshold)

    ours = jax.jit(lambda p: yolo_postprocess(p, **s, max_candidates=1200, nms_method=recording_keep))(pred)
    assert calls == [((2, 1200, 4), (2, 1200), 0.7)]  # one call: class-aware through the class offset
    fixed = yolo_postprocess(pred, **s, max_candidates=1200, nms_method="fixed_point")
    for got in (ours, fixed):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.export
def test_onnx_export_with_nonmaxsuppression():
    """The ONNX export's `nms_keep` as nms_method: the same detections in XLA, and in ONNX Runtime (symbolic batch)
    where it becomes NonMaxSuppression."""
    import jax2onnx
    import onnxruntime as ort
    from flax_mobilenet.export.onnx import OPSET
    from flax_mobilenet.export.onnx_nms import nms_keep

    pred = predictions(6, anchors=400, objectness=True)
    s = YOLOV5_PRESETS["val"]
    expected = yolov5_postprocess(pred, **s)

    def forward(x):
        return tuple(yolov5_postprocess(x, **s, nms_method=nms_keep))

    for got, want in zip(forward(pred), expected):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    proto = jax2onnx.to_onnx(forward, inputs=[("batch", *pred.shape[1:])], model_name="yolo_nms", opset=OPSET)
    assert "NonMaxSuppression" in {node.op_type for node in proto.graph.node}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {session.get_inputs()[0].name: pred}), expected):
        np.testing.assert_array_equal(got, np.asarray(want))


def test_no_candidates_and_bad_arguments():
    pred = predictions(7, anchors=50)
    pred[..., 4:] = 0.0
    empty = yolo_postprocess(pred)
    assert (np.asarray(empty.num_valid) == 0).all() and not np.asarray(empty.boxes).any()
    assert empty.boxes.shape == (2, 300, 4) and empty.labels.dtype == np.int32
    with pytest.raises(ValueError, match="channels"):
        yolo_postprocess(pred, num_classes=10)
    with pytest.raises(ValueError, match="conf_threshold"):
        yolov5_postprocess(pred, conf_threshold=2.0)
