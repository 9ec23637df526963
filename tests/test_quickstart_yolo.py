"""The README's YOLO quickstart on `shapes`, unchanged: YOLOv8n's head on MobileNetV2 from torchvision's ImageNet
weights reaches mAP50 >= 0.5 on the held-out split in under 6 minutes on 2 CPU cores; then predict.py draws its
boxes."""
import sys

import numpy as np
import pytest
from PIL import Image

from dense_quickstart import ROOT, _run, final_eval, held_out_images, predict_json, run_quickstart
from flax_mobilenet.training import shapes
from test_quickstart_detection import _iou

pytestmark = pytest.mark.torch  # converting the .pth reads it with torch


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return run_quickstart(tmp_path_factory.mktemp("yolo"), "yolov8n_mobilenet_v2_shapes")


def test_yolo_quickstart_reaches_map50_of_0_5_in_6_minutes(quickstart):
    workdir, rows, seconds, cpu_seconds, stdout = quickstart
    final = final_eval(rows)
    print(f"yolov8n_mobilenet_v2_shapes: mAP50 {final['eval_ul_map50']:.4f} (COCO API {final['eval_map50']:.4f}), "
          f"mAP50-95 {final['eval_ul_map']:.4f} at step {final['step']}, {seconds:.0f} s ({cpu_seconds:.0f} CPU-s)")
    assert final["eval_examples"] == shapes.NUM_EXAMPLES["validation"]
    # seeds 0 / 1 / 2 reach 53.5% / 67.9% / 57.5% (float32 rounding alone moves seed 0 between 53.5% and 64.7%): the
    # recipe's spread, not a bound on it; 0.5 catches a broken pipeline, loss or evaluation
    assert final["eval_ul_map50"] >= 0.5 and final["eval_map50"] >= 0.5, final
    # 6 minutes on 2 cores, counted in CPU time: CI's other worker shares the cores, which stretches the wall time
    # (525 s seen) but not the work (~460 CPU-s over 300 s wall on an idle 2-core VM)
    assert cpu_seconds < 2 * 360, f"{cpu_seconds:.0f} CPU-s, {seconds:.0f} s wall: above 6 minutes on 2 cores"
    assert "mobilenet_v2's layers as the backbone of yolov8n_mobilenet_v2" in stdout
    assert "(COCO API); mAP50-95" in stdout  # both numbers printed


def test_predict_draws_the_run_s_boxes_on_held_out_shapes(quickstart, tmp_path):
    workdir = quickstart.workdir
    examples, paths = held_out_images(tmp_path)
    results = predict_json(workdir, paths)
    found = total = 0
    for example, result in zip(examples, results):
        names = [(d["label"], [d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                               d["bbox"][1] + d["bbox"][3]]) for d in result["detections"]]
        for box, label in zip(example["boxes"], example["labels"]):
            total += 1
            found += any(name == shapes.SHAPES_CLASSES[label] and _iou(box, other) >= 0.5 for name, other in names)
        assert {name for name, _ in names} <= set(shapes.SHAPES_CLASSES[1:])
    assert found >= 0.6 * total, f"{found} of {total} held-out objects found with their class"
    busiest = max(range(len(paths)), key=lambda i: len(results[i]["detections"]))  # boxes at the default 0.3
    drawn = tmp_path / "drawn"
    _run([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(workdir), "--output-dir", str(drawn),
          str(paths[busiest])], workdir)
    (picture,) = drawn.iterdir()
    original = np.asarray(Image.open(paths[busiest]).convert("RGB"), np.int32)
    assert (np.abs(np.asarray(Image.open(picture).convert("RGB"), np.int32) - original).sum(-1) > 60).mean() > 0.01
