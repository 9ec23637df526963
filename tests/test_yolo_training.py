"""YOLO training data end to end: an ultralytics-format folder through the source, the 'yolo' recipe (mosaic ...)
and the eval letterbox, resumable exactly; its errors named; the model's classes without the background."""
import itertools

import numpy as np
import pytest
from PIL import Image

from flax_mobilenet.training.defaults import base_config
from flax_mobilenet.training.experiment import Experiment
from flax_mobilenet.training.sources import DatasetError

COLOURS = ((230, 30, 30), (30, 230, 30), (30, 30, 230))  # class 0, 1, 2


def _dataset(root, sizes=((96, 128), (128, 96), (100, 100), (120, 80), (64, 64), (128, 128)) * 2):
    """images/{train,val} of grey noise with one or two filled rectangles of its class's colour, and their labels."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i, (height, width) in enumerate(sizes):
            pixels = rng.integers(100, 140, (height, width, 3), dtype=np.uint8)
            rows = []
            for k in range(1 + i % 2):
                cls = (i + k) % 3
                x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
                x1, y1 = x0 + int(rng.integers(12, width // 2)), y0 + int(rng.integers(12, height // 2))
                pixels[y0:y1, x0:x1] = COLOURS[cls]
                rows.append(f"{cls} {(x0 + x1) / 2 / width} {(y0 + y1) / 2 / height} {(x1 - x0) / width} "
                            f"{(y1 - y0) / height}")
            Image.fromarray(pixels).save(root / "images" / split / f"{i}.png")
            if i != 4:  # image 4: no label file, a background image
                (root / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [red, green, blue]\n")
    return root / "data.yaml"


def _config(data_yaml, **overrides):
    config = base_config()
    config.model.name = "yolov8n"
    config.dataset, config.image_size, config.batch_size, config.max_boxes = f"yolo:{data_yaml}", 64, 4, 4
    config.update(overrides)
    return config


def _colour_inside(image, box, colour):
    x0, y0, x1, y1 = np.round(box).astype(int)
    patch = image[y0:y1, x0:x1].reshape(-1, 3).astype(int)
    return np.mean(np.abs(patch - colour).sum(-1) < 60) if patch.size else 0.0


def test_yolo_folder_trains_with_mosaic_resumes_exactly_and_evaluates_letterboxed(tmp_path):
    config = _config(_dataset(tmp_path))
    config.augment.update(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)  # colours kept: they tell where each box's pixels are
    experiment = Experiment(config)
    info = experiment.info
    assert (info.num_train, info.num_eval, info.num_classes) == (12, 12, 4)  # + the background row 0
    assert experiment.num_classes == 3 and experiment.class_names == ("red", "green", "blue")
    assert experiment.pipeline.preprocessing.detection_recipe == "yolo"  # the head's own ('auto')
    stream = experiment.pipeline.train_batches(global_batch_size=4, process_index=0, process_count=1)
    first = list(itertools.islice(stream, 4))
    resumed = next(experiment.pipeline.train_batches(global_batch_size=4, process_index=0, process_count=1,
                                                     start_step=3))
    for key in first[3]:
        np.testing.assert_array_equal(first[3][key], resumed[key], err_msg=key)
    batch = first[0]
    assert batch["image"].shape == (4, 64, 64, 3) and batch["boxes"].shape == (4, 16, 4)  # 4 images' boxes
    assert batch["image"].dtype == np.uint8  # the step normalises on the device: ultralytics' inputs x / 255
    normalised = np.asarray(experiment.pipeline.device_transform(train=True)(batch)["image"])
    np.testing.assert_allclose(normalised, batch["image"] / 255.0, atol=1e-6)
    valid, labels = batch["box_mask"], batch["labels"]
    assert (valid == (labels > 0)).all() and valid.any() and set(labels[valid]) <= {1, 2, 3}
    pixels = batch["image"].astype(np.float64)
    inside = [_colour_inside(pixels[i], box, COLOURS[label - 1])
              for i in range(4) for box, label in zip(batch["boxes"][i][valid[i]], labels[i][valid[i]])]
    assert np.median(inside) > 0.8  # the boxes follow their rectangles through mosaic and perspective

    config.eval_rect = False
    evaluated = list(Experiment(config).pipeline.eval_batches(global_batch_size=8, process_index=0,
                                                              process_count=1))
    assert sum(b["mask"].sum() for b in evaluated) == 12
    image, boxes, labels = evaluated[0]["image"][0], evaluated[0]["boxes"][0], evaluated[0]["labels"][0]
    assert image.shape == (64, 64, 3) and (labels > 0).sum() == 1  # 96x128 letterboxed to 48x64, grey bands
    np.testing.assert_array_equal(image[:8], 114)  # uint8: normalised on the device
    assert _colour_inside(image.astype(np.float64), boxes[0], COLOURS[labels[0] - 1]) > 0.8


def test_yolo_eval_runs_in_ultralytics_rectangular_batches(tmp_path):
    """Images sorted by aspect ratio, each global batch letterboxed to its own shape (pad 0.5), every example once,
    on every process alike."""
    from flax_mobilenet.training.yolo_augment import rect_batch_shapes

    pipeline = Experiment(_config(_dataset(tmp_path))).pipeline  # eval_rect: the default
    sizes = pipeline.source.image_sizes("eval")
    rect = rect_batch_shapes(sizes, 4, 64, 32, 0.5)
    batches = list(pipeline.eval_batches(global_batch_size=4, process_index=0, process_count=1))
    assert [b["image"].shape[1:3] for b in batches] == [tuple(shape) for shape in rect.batch_shapes]
    assert len({b["image"].shape[1:3] for b in batches}) > 1 and sum(b["mask"].sum() for b in batches) == 12
    labels = np.concatenate([b["labels"] for b in batches])
    expected = np.stack([pipeline.source.numpy_reader("eval")(i)["labels"] for i in rect.order])
    np.testing.assert_array_equal(labels, expected)  # in ultralytics' order, each example once
    halves = [list(pipeline.eval_batches(global_batch_size=4, process_index=p, process_count=2)) for p in range(2)]
    for whole, first, second in zip(batches, *halves):
        np.testing.assert_array_equal(np.concatenate([first["image"], second["image"]]), whole["image"])


def test_a_bad_label_row_and_a_corrupt_image_are_named(tmp_path):
    data = _dataset(tmp_path)
    label = tmp_path / "labels" / "train" / "2.txt"
    good = label.read_text()
    label.write_text(good + "7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"labels/train/2.txt line 2 .*class 7 is not an integer in \[0, 3\)"):
        Experiment(_config(data))
    label.write_text(good)
    (tmp_path / "images" / "train" / "5.png").write_bytes(b"\x89PNG not really")
    config = _config(data, augment=dict(base_config().augment, mosaic=0.0))
    pipeline = Experiment(config).pipeline
    with pytest.raises(DatasetError, match="images/train/5.png"):
        list(itertools.islice(pipeline.train_batches(global_batch_size=4, process_index=0, process_count=1), 3))


def test_the_ultralytics_recipe_needs_an_indexed_source():
    import tensorflow_datasets as tfds

    config = base_config()
    config.model.name, config.dataset, config.image_size = "yolov8n", "voc/2007", 64
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(DatasetError, match="mosaic draws examples by index"):
            Experiment(config).pipeline
