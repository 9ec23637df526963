"""The PyTorch YOLO references themselves (tests/yolo_reference.py): the sizes SPEC 6 gives, their eval
outputs and our layout of them, the randomization, and the NMS stand-in against torchvision's CPU kernel."""
from __future__ import annotations

import numpy as np
import pytest

from yolo_reference import torch  # noqa: F401  (first: the torchvision stub)
import torchvision.ops  # noqa: E402
import yolo_reference as ref  # noqa: E402


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


PARAMETERS = {  # SPEC 6, nc 80 unless said
    "yolov8n": (lambda: ref.ultralytics_model("yolov8n.yaml"), 3_157_200),
    "yolov8s": (lambda: ref.ultralytics_model("yolov8s.yaml"), 11_166_560),
    "yolov5nu": (lambda: ref.ultralytics_model("yolov5nu.yaml"), 2_654_816),
    "yolo11n": (lambda: ref.ultralytics_model("yolo11n.yaml"), 2_624_080),
    "yolov5n": (lambda: ref.yolov5_model("yolov5n.yaml"), 1_872_157),
    "seed000_small": (lambda: ref.seed000_model("small", nc=80), 5_235_267),
    "seed000_large_nc20": (lambda: ref.seed000_model("large", nc=20), 5_590_759),
    "seed004_n": (lambda: ref.seed004_model("n"), 3_905_984),
    "seed004_s": (lambda: ref.seed004_model("s"), 8_225_536),
}


@pytest.mark.parametrize("name", PARAMETERS)
def test_parameter_count(name):
    build, expected = PARAMETERS[name]
    model = build()
    assert count(model) == expected
    assert not model.training


def test_seed_hybrid_parts():
    small, large = ref.seed000_model("small", nc=80), ref.seed000_model("large", nc=20)
    assert count(small.model[:12]) == 864_942 and count(small.model[-1]) == 227_205
    assert count(large.model[:16]) == 2_814_598
    assert [conv.in_channels for conv in small.model[-1].m] == [168, 312, 408]
    assert [conv.in_channels for conv in large.model[-1].m] == [128, 256, 512]
    assert [small.model[-1].f, large.model[-1].f] == [[19, 22, 25], [23, 26, 29]]
    n = ref.seed004_model("n")
    assert [count(n.model[0]), count(n.model[1]), count(n.model[2:14]), count(n.model[14])] == [
        1_811_712, 215_872, 980_736, 897_664]
    detect = n.model[14]
    assert isinstance(detect, ref.UltralyticsDetect) and len(n.model) == 15
    assert [branch[0].conv.in_channels for branch in detect.cv2] == [64, 128, 256]
    assert type(detect.cv3[0][0]).__name__ == "Conv"  # the legacy (v8) class branch, not yolo11's DWConv
    assert detect.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.mark.parametrize("name", ["seed000_small", "seed000_large_nc20", "seed004_n"])
def test_hybrid_state_dict_keys(name):
    model = PARAMETERS[name][0]()
    keys = list(ref.state_dict_numpy(model))
    assert not any(key.endswith("num_batches_tracked") for key in keys)
    assert all(key.startswith("model.") for key in keys)
    if name.startswith("seed004"):
        assert keys[0] == "model.0.model.0.conv.weight" and keys[-1] == "model.14.dfl.conv.weight"
        assert "model.1.cv1.conv.weight" in keys and "model.0.model.17.conv2.bn.running_var" in keys
    else:
        last = len(model.model) - 1
        assert keys[0] == "model.0.conv.weight" and keys[-1] == f"model.{last}.m.2.bias"
        assert f"model.{last}.anchors" in keys
        assert any(key.endswith(".fc.0.weight") for key in keys)  # the SE layers' Linear


def test_randomization_keeps_the_architecture_constants():
    v8 = ref.ultralytics_model("yolov8n.yaml")
    np.testing.assert_array_equal(ref.state_dict_numpy(v8)["model.22.dfl.conv.weight"].ravel(), np.arange(16))
    anchors = ref.state_dict_numpy(ref.yolov5_model())["model.24.anchors"]
    np.testing.assert_array_equal(anchors[0], [[1.25, 1.625], [2, 3.75], [4.125, 2.875]])
    np.testing.assert_array_equal(anchors[2], [[3.625, 2.8125], [4.875, 6.1875], [11.65625, 10.1875]])
    for model in (v8, ref.yolov5_model(), ref.seed000_model("small"), ref.seed004_model("n")):
        state = ref.state_dict_numpy(model)
        variances = np.concatenate([v for k, v in state.items() if k.endswith("running_var")])
        assert 0.5 <= variances.min() and variances.max() <= 1.5
        biases = np.concatenate([v for k, v in state.items() if k.endswith("bias")])
        assert np.abs(biases).max() < 1.0 and biases.std() > 0.05
        batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert {(m.eps, m.momentum) for m in batch_norms} == {(1e-3, 0.03)}


def test_ultralytics_eval_output_at_320x416():
    model = ref.ultralytics_model("yolov8n.yaml")
    with torch.no_grad(), ref._one_thread():
        y, raw = model(torch.zeros(1, 3, 320, 416))
    assert y.shape == (1, 84, 2730)
    assert raw["boxes"].shape == (1, 64, 2730) and raw["scores"].shape == (1, 80, 2730)


IMAGES = np.random.default_rng(0).uniform(-2, 2, (2, 64, 96, 3)).astype(np.float32)
ANCHORS_64x96 = 8 * 12 + 4 * 6 + 2 * 3  # 126 cells


@pytest.mark.parametrize("name, channels", [("yolov8n", 84), ("yolo11n", 84), ("seed004_n", 84),
                                            ("yolov5n", 85), ("seed000_small", 85), ("seed000_large_nc20", 25)])
def test_predictions_layout(name, channels):
    model = PARAMETERS[name][0]()
    ours = ref.predictions(model, IMAGES)
    anchor_based = isinstance(model.model[-1], ref.YOLOv5Detect)
    assert ours.dtype == np.float32
    assert ours.shape == (2, 3 * ANCHORS_64x96 if anchor_based else ANCHORS_64x96, channels)
    with torch.no_grad(), ref._one_thread():  # as `predictions` runs (the thread count moves the last bits)
        raw = model(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy()))[0].numpy()
    np.testing.assert_array_equal(ours, raw if anchor_based else raw.transpose(0, 2, 1))
    scores = ours[..., 4:]
    assert 0.0 <= scores.min() and scores.max() <= 1.0  # sigmoid scores (and objectness)
    assert (ours[..., 2:4] >= 0).all()  # (cx, cy, w, h) in pixels


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """torchvision's CPU kernel, one pair at a time (stable descending sort, float32 IoU, double threshold)."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[position + 1:]:
            if suppressed[j]:
                continue
            w = max(np.float32(0), min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(np.float32(0), min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = w * h
            with np.errstate(invalid="ignore", divide="ignore"):
                overlap = inter / ((area[i] + area[j]) - inter)
            if float(overlap) > threshold:
                suppressed[j] = True
    return np.array(keep, dtype=np.int64)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.45, 0.6, 0.7])
def test_nms_standin_is_torchvisions_kernel(threshold):
    rng = np.random.default_rng(int(threshold * 10))
    for trial in range(6):
        n = 120
        corner = rng.uniform(0, 100, (n, 2)).astype(np.float32)
        size = rng.uniform(0, 40, (n, 2)).astype(np.float32)
        size[:5] = 0  # empty boxes: NaN IoU never suppresses
        boxes = np.concatenate([corner, corner + size], 1)
        scores = (rng.integers(0, 8, n) if trial % 2 else rng.random(n)).astype(np.float32)  # odd trials: ties
        expected = brute_force_nms(boxes, scores, threshold)
        kept = ref.nms_standin(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
        assert kept.dtype == torch.int64
        np.testing.assert_array_equal(kept.numpy(), expected)
        # both packages call torchvision.ops.nms: the stand-in, where the compiled op does not load
        np.testing.assert_array_equal(
            torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy(), expected)


def test_packages_nms_run():
    v8 = ref.predictions(ref.ultralytics_model("yolov8n.yaml"), IMAGES)
    detections = ref.ultralytics_nms(v8.transpose(0, 2, 1), conf_thres=0.25, iou_thres=0.7)
    assert len(detections) == 2 and all(d.shape[1] == 6 and d.dtype == np.float32 for d in detections)
    assert all(len(d) for d in detections)
    v5 = ref.predictions(ref.yolov5_model(), IMAGES)
    detections = ref.yolov5_nms(v5, conf_thres=0.001, iou_thres=0.6, multi_label=True)
    assert len(detections) == 2 and all(d.shape[1] == 6 and 0 < len(d) <= 300 for d in detections)
