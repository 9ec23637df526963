"""Segmentation and detection training: the tasks' losses against torch, the `shapes` batches (aligned, exact on
resume), and a detection run killed and resumed exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_mobilenet.training import tasks
from flax_mobilenet.training.experiment import Experiment
from flax_mobilenet.training.shapes import NUM_CLASSES
from test_train import (ROOT, kill_after_checkpoint, read_jsonl, run_train,  # noqa: F401 (the autouse fixture)
                        shared_compilation_cache)

def _config(path, **overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(overrides)
    return config


@pytest.mark.torch
def test_segmentation_loss_is_torchvisions_criterion():
    """torchvision's references/segmentation `criterion`: cross_entropy(ignore_index=255) per head, out + 0.5 aux."""
    from torch_reference import torch

    rng = np.random.default_rng(0)
    out, aux = (rng.normal(size=(2, 5, 7, NUM_CLASSES)).astype(np.float32) for _ in range(2))
    labels = rng.integers(0, NUM_CLASSES, (2, 5, 7)).astype(np.int32)
    labels[0, :2] = 255
    loss, metrics = tasks.Segmentation(NUM_CLASSES).loss({"out": jnp.asarray(out), "aux": jnp.asarray(aux)},
                                                         {"label": jnp.asarray(labels)})
    to_torch = lambda x: torch.tensor(x).permute(0, 3, 1, 2)  # noqa: E731
    target = torch.tensor(labels).long()
    expected = (torch.nn.functional.cross_entropy(to_torch(out), target, ignore_index=255)
                + 0.5 * torch.nn.functional.cross_entropy(to_torch(aux), target, ignore_index=255))
    assert float(loss) == pytest.approx(expected.item(), rel=1e-5)
    counted = labels != 255
    assert float(metrics["pixel_accuracy"]) == pytest.approx((out.argmax(-1) == labels)[counted].mean(), rel=1e-6)


def test_segmentation_eval_counts_only_real_examples_and_labelled_pixels():
    logits = jax.nn.one_hot(jnp.asarray([[[1, 2]], [[3, 3]]]), NUM_CLASSES)  # (2, 1, 2, C): predictions 1 2 / 3 3
    batch = {"label": jnp.asarray([[[1, 255]], [[3, 0]]]), "mask": jnp.asarray([1.0, 0.0])}
    sums = tasks.Segmentation(NUM_CLASSES).eval_outputs(logits, batch)
    assert int(sums["count"]) == 1 and int(sums["pixels"]) == 1
    assert np.asarray(sums["confusion"]).sum() == 1 and int(sums["confusion"][1, 1]) == 1


@pytest.mark.parametrize("model", ["lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"])
def test_shapes_batches_resume_exactly_and_keep_labels_aligned(model):
    config = _config("configs/lraspp_shapes.py", image_size=64)
    config.model.name = model
    pipeline = Experiment(config).pipeline
    batches = lambda start: pipeline.train_batches(  # noqa: E731
        global_batch_size=8, process_index=0, process_count=1, start_step=start)
    stream = batches(0)
    first = [next(stream) for _ in range(3)]
    resumed = next(batches(2))
    for key in first[2]:
        np.testing.assert_array_equal(first[2][key], resumed[key], err_msg=key)
    batch = first[0]
    assert batch["image"].shape == (8, 64, 64, 3) and batch["image"].dtype == np.uint8  # normalised on the device
    if model.startswith("lraspp"):
        assert batch["label"].shape == (8, 64, 64)
        assert set(np.unique(batch["label"])) <= set(range(NUM_CLASSES)) | {255}
    else:
        boxes, labels, valid = batch["boxes"], batch["labels"], batch["box_mask"]
        assert (valid == (labels > 0)).all() and valid.any(axis=1).mean() > 0.5
        assert (boxes[valid][:, 2:] > boxes[valid][:, :2]).all() and (boxes >= 0).all() and (boxes <= 64).all()
        assert (boxes[~valid] == 0).all()


def test_shapes_eval_batches_cover_every_example_once():
    config = _config("configs/ssdlite_shapes.py", image_size=64)
    batches = list(Experiment(config).pipeline.eval_batches(global_batch_size=64, process_index=0, process_count=1))
    assert sum(b["mask"].sum() for b in batches) == Experiment(config).info.num_eval == 300
    assert len(batches) == 5 and batches[-1]["mask"][:300 - 256].all() and not batches[-1]["mask"][44:].any()


YOLO_QUICKSTART = "configs/yolov8n_mobilenet_v2_shapes.py"
# A short detection run at 64x64 (feature maps 4x4 down to 1x1) from random weights: constant lr, checkpoints
# every 2 steps, one eval.
SHORT_DETECTION_RUN = ["--config.init_from=", "--config.image_size=64", "--config.batch_size=8", "--config.eval_batch_size=100",
                       "--config.num_train_steps=6", "--config.log_every_steps=1", "--config.eval_every_steps=6",
                       "--config.checkpoint_every_steps=2", "--config.progress_bar=False",
                       "--config.lr_schedule.name=constant", "--config.learning_rate=1e-3"]


@pytest.mark.slow
def test_detection_sigkill_then_rerun_ends_exactly_like_an_uninterrupted_run(tmp_path):
    """YOLO on shapes: the ultralytics recipe's mosaic pipeline and its loss resume exactly too (SSDLite's
    pipeline resumes exactly by test_shapes_batches_resume_exactly_and_keep_labels_aligned)."""
    import subprocess

    straight = tmp_path / "straight"
    run_train(straight, *SHORT_DETECTION_RUN, config=YOLO_QUICKSTART)
    workdir = tmp_path / "killed"
    kill_after_checkpoint(run_train(workdir, *SHORT_DETECTION_RUN, config=YOLO_QUICKSTART,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), workdir, step=2, last_step=6)
    result = run_train(workdir, *SHORT_DETECTION_RUN, config=YOLO_QUICKSTART)
    assert "resuming from" in result.stdout
    evals = read_jsonl(workdir / "metrics.jsonl")
    assert evals == read_jsonl(straight / "metrics.jsonl") and {"eval_map", "eval_map50"} <= set(evals[-1])

    def losses(run):
        return [(r["step"], r["loss"], r["box_loss"], r["class_loss"]) for r in read_jsonl(run / "train_metrics.jsonl")]

    assert losses(workdir) == losses(straight)
    assert len(losses(workdir)) == 6 and losses(workdir)[-1][1] < losses(workdir)[0][1]
