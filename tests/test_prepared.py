"""`prepare.py`'s shards (`prepared:DIR`): what is stored (reduced training images with their boxes and masks, eval
images byte for byte), that a prepared run reads the same examples in the same order with the same augmentation
draws and resumes exactly, and the errors a user meets."""
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from flax_mobilenet.training import resample
from flax_mobilenet.training.defaults import base_config
from flax_mobilenet.training.experiment import Experiment
from flax_mobilenet.training.prepare import prepare
from flax_mobilenet.training.shards import METADATA_FILE
from flax_mobilenet.training.sources import DatasetError
from test_dense_sources import DETECTION, SEGMENTATION, _coco
from test_dense_training import _config
from test_yolo_training import _config as _yolo_config
from test_yolo_training import _dataset as _yolo_dataset

ROOT = Path(__file__).resolve().parents[1]
SIDE = 48


def _folder(root):
    """Two classes of 12 images each: small ones (kept as they are) and larger ones (reduced), JPEG and PNG."""
    rng = np.random.default_rng(0)
    for name in ("ant", "zebra"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            height, width = (40 + i, 50) if i % 3 else (90 + i, 120)
            y, x = np.mgrid[:height, :width] / 9.0  # smooth, as photos are (JPEG keeps it within a few levels)
            phase = rng.uniform(0, 6, 3)
            pixels = (127 + 100 * np.sin(x[..., None] + phase) * np.cos(y[..., None] - phase)).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _prepared(config, out, side=SIDE):
    experiment = Experiment(config)
    prepare(experiment.source, experiment.task_name, out, side, progress=False)
    prepared = config.copy_and_resolve_references()
    prepared.dataset = f"prepared:{out}"
    return experiment.source, Experiment(prepared).source, prepared


def _read(source, split, index):
    return {k: v.numpy() for k, v in source.reader(split)(tf.constant(index, tf.int64)).items()}


def _batches(config, n, batch=4, start_step=0):
    return list(itertools.islice(Experiment(config).pipeline.train_batches(
        global_batch_size=batch, process_index=0, process_count=1, start_step=start_step), n))


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    config = base_config()
    config.dataset, config.image_size, config.seed = f"folder:{_folder(tmp_path_factory.mktemp('folder'))}", 32, 5
    return (config, *_prepared(config, tmp_path_factory.mktemp("prepared") / "out"))


def test_training_images_are_reduced_eval_images_kept_byte_for_byte(classification):
    config, original, prepared, _ = classification
    assert prepared.info.num_train == original.info.num_train and prepared.info.num_eval == original.info.num_eval
    assert prepared.info.class_names == original.info.class_names == ("ant", "zebra")
    reduced = 0
    for index in range(original.size("train")):
        source, stored = _read(original, "train", index), _read(prepared, "train", index)
        assert stored["label"] == source["label"]
        height, width = source["image"].shape[:2]
        if min(height, width) <= SIDE:  # small enough: its original bytes
            np.testing.assert_array_equal(stored["image"], source["image"])
            continue
        reduced += 1
        expected_shape = (round(height * SIDE / min(height, width)), round(width * SIDE / min(height, width)))
        assert stored["image"].shape[:2] == expected_shape
        resized = resample.resize_bilinear(source["image"], *expected_shape)  # Pillow's arithmetic, then JPEG
        np.testing.assert_array_equal(stored["image"], tf.io.decode_jpeg(tf.io.encode_jpeg(resized, quality=90)))
    assert reduced >= 4
    sizes = prepared.image_sizes("train")
    assert [tuple(s) for s in sizes[:3]] == [_read(prepared, "train", i)["image"].shape[:2] for i in range(3)]
    for index in range(original.size("eval")):
        source, stored = _read(original, "eval", index), _read(prepared, "eval", index)
        np.testing.assert_array_equal(stored["image"], source["image"])
        assert stored["label"] == source["label"]


def test_a_prepared_run_draws_the_same_order_and_augmentations_and_resumes_exactly(classification):
    config, _, _, prepared_config = classification
    original, prepared = _batches(config, 4), _batches(prepared_config, 4)
    for before, after in zip(original, prepared):
        np.testing.assert_array_equal(before["label"], after["label"])  # the same examples, in the same order
        np.testing.assert_array_equal(before["seed"], after["seed"])  # the same device augmentation keys
        assert after["image"].shape == (4, 32, 32, 3) and after["image"].dtype == np.uint8
    resumed = _batches(prepared_config, 1, start_step=3)[0]  # across the epoch boundary (5 steps of 4 of 21)
    for key in resumed:
        np.testing.assert_array_equal(resumed[key], prepared[3][key], err_msg=key)
    evaluated = list(Experiment(prepared_config).pipeline.eval_batches(global_batch_size=2, process_index=0,
                                                                       process_count=1))
    expected = list(Experiment(config).pipeline.eval_batches(global_batch_size=2, process_index=0, process_count=1))
    for before, after in zip(expected, evaluated, strict=True):
        for key in before:
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)


@pytest.mark.parametrize("task_config", [DETECTION, SEGMENTATION])
def test_coco_boxes_and_masks_follow_the_reduced_image(task_config, tmp_path):
    config = _config(task_config, dataset=f"coco:{_coco(tmp_path / 'coco')}", image_size=32, max_boxes=5)
    original, prepared, prepared_config = _prepared(config, tmp_path / "out", side=32)
    detection = task_config == DETECTION
    for index in range(original.size("train")):
        source, stored = _read(original, "train", index), _read(prepared, "train", index)
        height, width = source["image"].shape[:2]
        bound = max(height, width) if detection else min(height, width)  # detection bounds the longer side
        shape = (round(height * 32 / bound), round(width * 32 / bound))
        assert stored["image"].shape[:2] == shape
        scale = np.array([shape[1] / width, shape[0] / height] * 2, np.float32)
        np.testing.assert_allclose(stored["boxes"], source["boxes"] * scale, rtol=1e-6)
        np.testing.assert_array_equal(stored["labels"], source["labels"])
        if detection:
            assert stored["mask"].shape == (0, 0)
        else:
            nearest = tf.image.resize(source["mask"][..., None], shape, method="nearest")[..., 0].numpy()
            np.testing.assert_array_equal(stored["mask"], nearest)
    for index in range(original.size("eval")):
        source, stored = _read(original, "eval", index), _read(prepared, "eval", index)
        for key in source:
            np.testing.assert_array_equal(stored[key], source[key], err_msg=key)
    batches = _batches(prepared_config, 3, batch=2)
    resumed = _batches(prepared_config, 1, batch=2, start_step=2)[0]
    for key in resumed:
        np.testing.assert_array_equal(resumed[key], batches[2][key], err_msg=key)
    if detection:  # the shards hold an image with 3 boxes (v2): fewer rows cannot take it
        with pytest.raises(DatasetError, match="raise --config.max_boxes"):
            Experiment(_config(task_config, dataset=prepared_config.dataset, image_size=32, max_boxes=2))


def test_yolo_mosaic_reads_the_examples_the_pipeline_reads(tmp_path):
    config = _yolo_config(_yolo_dataset(tmp_path / "yolo"))
    original, prepared, prepared_config = _prepared(config, tmp_path / "out", side=100)
    read_numpy = prepared.numpy_reader("train")  # mosaic's reader: parsed without the graph
    for index in range(prepared.size("train")):
        graph = _read(prepared, "train", index)
        for key, value in read_numpy(index).items():
            np.testing.assert_array_equal(value, graph[key], err_msg=key)
    np.testing.assert_array_equal(prepared.image_sizes("eval"), original.image_sizes("eval"))
    batches = _batches(prepared_config, 2)
    assert batches[0]["image"].shape == (4, 64, 64, 3) and batches[0]["box_mask"].any()


def test_what_cannot_be_prepared_or_read_is_named(classification, tmp_path):
    config, original, _, prepared_config = classification
    out = Path(prepared_config.dataset.split(":", 1)[1])
    with pytest.raises(DatasetError, match="holds a prepared dataset already"):
        prepare(original, "classification", out, SIDE, progress=False)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DatasetError, match="cannot write the prepared dataset into .*a_file/out .*pick another --out"):
        prepare(original, "classification", tmp_path / "a_file" / "out", SIDE, progress=False)
    digits = base_config()
    digits.dataset = "digits"
    with pytest.raises(DatasetError, match="not a dataset of image files"):
        prepare(Experiment(digits).source, "classification", tmp_path / "digits", SIDE, progress=False)
    detector = _config(DETECTION, dataset=prepared_config.dataset, image_size=32)
    with pytest.raises(DatasetError, match="for classification, not for a detection model"):
        Experiment(detector)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "train-00000-of-00001.array_record").write_bytes(b"")
    prepared_config.dataset = f"prepared:{unfinished}"
    with pytest.raises(DatasetError, match="did not finish; run it again"):
        Experiment(prepared_config)
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    shard = next(damaged.glob("train-*.array_record"))
    data = bytearray(shard.read_bytes())
    middle = len(data.rstrip(b"\0")) // 2  # inside the records (the file is padded with zeros)
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])  # that record's hash fails
    shard.write_bytes(bytes(data))
    prepared_config.dataset = f"prepared:{damaged}"
    with pytest.raises(DatasetError, match="train shards cannot be read .*the shards are damaged; prepare the"):
        _batches(prepared_config, 6)  # the whole epoch
    metadata = json.loads((out / METADATA_FILE).read_text())
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / METADATA_FILE).write_text(json.dumps(metadata))  # the metadata without its shards
    prepared_config.dataset = f"prepared:{tmp_path / 'moved'}"
    with pytest.raises(DatasetError, match="shards are missing"):
        Experiment(prepared_config)


def test_prepare_py_writes_then_refuses_to_overwrite(classification, tmp_path):
    config = classification[0]
    command = [sys.executable, str(ROOT / "prepare.py"), "--config", str(ROOT / "configs" / "v3_small_digits.py"),
               f"--config.dataset={config.dataset}", "--out", str(tmp_path / "out"), "--side", "40"]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "wrote 21 train and 3 eval images" in first.stdout and "shorter side at most 40 px" in first.stdout
    assert f"--config.dataset=prepared:{tmp_path / 'out'}" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [f"error: {tmp_path / 'out'} holds a prepared dataset already: pass "
                                                  f"another --out, or delete it first"]
