"""The README's LR-ASPP quickstart on `shapes`, unchanged: mIoU >= 0.6 on the held-out split, then served."""
import numpy as np
import pytest

from dense_quickstart import final_eval, held_out_images, predict_json, run_quickstart
from flax_mobilenet.training import shapes

pytestmark = pytest.mark.torch  # converting the .pth reads it with torch


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    return run_quickstart(tmp_path_factory.mktemp("lraspp"), "lraspp_shapes")


def test_lraspp_quickstart_reaches_miou_of_0_6(quickstart):
    workdir, rows, seconds, _, stdout = quickstart
    final = final_eval(rows)
    print(f"lraspp_shapes: mIoU {final['eval_miou']:.4f}, pixel accuracy {final['eval_pixel_accuracy']:.4f} at "
          f"step {final['step']}, {seconds:.0f} s")
    assert final["eval_examples"] == shapes.NUM_EXAMPLES["validation"]
    assert final["eval_miou"] >= 0.6, final
    assert "mobilenet_v2's layers as the backbone of lraspp_mobilenet_v2" in stdout


def test_the_trained_segmenter_labels_held_out_pixels_through_predict(quickstart, tmp_path):
    workdir = quickstart.workdir
    examples, paths = held_out_images(tmp_path)
    distances = []  # total variation between the predicted and the true class fractions of each image
    for example, result in zip(examples, predict_json(workdir, paths)):
        truth = np.bincount(example["mask"].ravel(), minlength=shapes.NUM_CLASSES) / example["mask"].size
        predicted = np.zeros(shapes.NUM_CLASSES)
        for entry in result["classes"]:
            assert entry["label"] == shapes.SHAPES_CLASSES[entry["index"]]
            predicted[entry["index"]] = entry["fraction"]
        distances.append(np.abs(predicted - truth).sum() / 2)
        assert distances[-1] <= 0.15, (result["image"], predicted.round(3), truth.round(3))
    assert np.mean(distances) <= 0.05, distances  # measured: 0.017 on average, 0.078 at most
