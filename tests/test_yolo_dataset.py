"""Ultralytics-format detection datasets (`yolo:/path/data.yaml`) read by `training.yolo_dataset`: tiny datasets
built here (a few PNGs, label files, data YAMLs), their arrays, and one test per rejected input checking that the
one-line message names the file and the row."""
import os

import numpy as np
import pytest
from PIL import Image

from flax_mobilenet.training.yolo_dataset import check_image, label_path, load_yolo_dataset


def _image(path, width=32, height=24, shade=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), shade, np.uint8)
    Image.fromarray(pixels).save(path)


def _labels(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _dataset(root, yaml_text=None):
    """images/train: a (2 boxes), b (a duplicate row), c (empty label file), d (no label file);
    images/val: v (1 box)."""
    _image(root / "images/train/a.png")
    _image(root / "images/train/b.png", shade=1)
    _image(root / "images/train/c.png", shade=2)
    _image(root / "images/train/d.png", shade=3)
    _image(root / "images/val/v.png", shade=4)
    (root / "images/train/notes.txt").write_text("not an image")  # ignored: not an image file
    _labels(root / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n1 0.25 0.75 0.5 0.5\n")
    _labels(root / "labels/train/b.txt", "\n2 0.5 0.5 1.0 1.0\r\n2 0.5 0.5 1.0 1.0\n")
    _labels(root / "labels/train/c.txt", "")
    _labels(root / "labels/val/v.txt", "1 0.1 0.2 0.2 0.2")
    yaml_file = root / "data.yaml"
    yaml_file.write_text(yaml_text or "path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog, bird]\n")
    return yaml_file


def _raises(match_parts, fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    assert type(info.value).__name__ == "DatasetError"
    message = str(info.value)
    assert "\n" not in message, message
    for part in match_parts:
        assert str(part) in message, (part, message)
    return message


def test_arrays_names_and_warnings(tmp_path):
    data = load_yolo_dataset(f"yolo:{_dataset(tmp_path)}")
    assert data.names == ("cat", "dog", "bird") and data.num_classes == 3
    assert set(data.splits) == {"train", "val"}
    train = data.train
    assert [os.path.basename(p) for p in train.images] == ["a.png", "b.png", "c.png", "d.png"]
    assert train.label_files[0] == str(tmp_path / "labels/train/a.txt")
    np.testing.assert_array_equal(train.offsets, [0, 2, 3, 3, 3])
    np.testing.assert_array_equal(train.classes, [0, 1, 2])
    assert train.boxes.dtype == np.float32
    np.testing.assert_allclose(train.boxes, [[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    assert train.backgrounds == 2  # c (empty) and d (no label file)
    boxes, classes = train.boxes_of(1)
    np.testing.assert_array_equal(classes, [2])
    assert len(data.val) == 1 and data.val.classes.tolist() == [1]
    assert len(data.warnings) == 1 and "1 duplicate label row(s)" in data.warnings[0] and "b.txt" in data.warnings[0]

    boxes, classes, counts = data.padded("train", 3)
    assert boxes.shape == (4, 3, 4) and classes.shape == (4, 3) and counts.tolist() == [2, 1, 0, 0]
    np.testing.assert_allclose(boxes[0, :2], [[0.4, 0.3, 0.6, 0.7], [0, 0.5, 0.5, 1]], atol=1e-6)  # xyxy
    np.testing.assert_array_equal(classes, [[0, 1, -1], [2, -1, -1], [-1, -1, -1], [-1, -1, -1]])
    assert not boxes[0, 2:].any() and not boxes[2:].any()
    np.testing.assert_array_equal(data.image_sizes("val"), [[24, 32]])


def test_spec_forms_names_dict_nc_and_relative_path(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _dataset(root)
    (tmp_path / "cfg").mkdir()
    yaml_file = tmp_path / "cfg/data.yml"  # `path` relative to the YAML's folder, not the current directory
    yaml_file.write_text("path: ../ds\ntrain: images/train\nvalidation: images/val\nnc: 3\n"
                         "names: {0: cat, 2: bird, 1: dog}\n")
    monkeypatch.chdir(root / "images")
    data = load_yolo_dataset(str(yaml_file))
    assert data.names == ("cat", "dog", "bird") and data.root == str(root.resolve())
    assert any("'validation' read as 'val'" in w for w in data.warnings)
    (tmp_path / "cfg/data.yml").write_text("train: ../ds/images/train\nval: ../ds/images/val\nnc: 3\n")
    data = load_yolo_dataset(f"yolo:{tmp_path / 'cfg'}")  # a folder with one YAML; no path: the YAML's folder
    assert data.names == ("class_0", "class_1", "class_2")


def test_txt_list_splits_and_lists_of_sources(tmp_path, monkeypatch):
    _dataset(tmp_path)
    (tmp_path / "train.txt").write_text("./images/train/a.png\n\n./images/train/b.png\n./images/train/readme.md\n")
    (tmp_path / "val.txt").write_text(f"{tmp_path / 'images/val/v.png'}\n")
    (tmp_path / "data.yaml").write_text("train: [train.txt, images/val]\nval: val.txt\ntest: val.txt\n"
                                        "names: [cat, dog, bird]\n")
    monkeypatch.chdir(tmp_path.parent)
    data = load_yolo_dataset(str(tmp_path / "data.yaml"))
    assert [os.path.basename(p) for p in data.train.images] == ["a.png", "b.png", "v.png"]
    assert data.train.counts.tolist() == [2, 1, 1]
    assert len(data.val) == 1 and len(data.split("test")) == 1
    assert any("skipped 1 line(s)" in w and "line 4" in w for w in data.warnings)


def test_label_path_is_ultralytics_rule():
    assert label_path("/d/images/x/images/a.b.jpg") == "/d/images/x/labels/a.b.txt"
    assert label_path("/d/pics/a.png") == "/d/pics/a.txt"


@pytest.mark.parametrize("row, expected", [
    ("0 0.5 0.5 0.2", ["4 values", "expected 5"]),
    ("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2", ["segments are not supported, convert to boxes"]),
    ("0 0.5 abc 0.2 0.2", ["'abc' is not a number"]),
    ("0 0.5 nan 0.2 0.2", ["'nan' is not a finite number"]),
    ("3 0.5 0.5 0.2 0.2", ["class 3 is not an integer in [0, 3)"]),
    ("1.5 0.5 0.5 0.2 0.2", ["class 1.5 is not an integer"]),
    ("-1 0.5 0.5 0.2 0.2", ["class -1 is not an integer"]),
    ("0 1.2 0.5 0.2 0.2", ["cx 1.2 is outside [0, 1]", "divide pixel values"]),
    ("0 0.5 0.5 0 0.2", ["width 0 is not positive"]),
    ("0 0.5 0.5 0.2 -0.1", ["height -0.1 is not positive"]),
    ("0 -0.01 0.5 0.01 0.2", ["lies outside the image"]),
])
def test_bad_rows_name_file_and_line(tmp_path, row, expected):
    yaml_file = _dataset(tmp_path)
    _labels(tmp_path / "labels/train/a.txt", f"0 0.5 0.5 0.2 0.4\n\n{row}\n{row}\n")
    message = _raises([tmp_path / "labels/train/a.txt", "line 3", *expected], load_yolo_dataset, str(yaml_file))
    assert "[and 1 more label problem(s) in split 'train'" in message  # line 4 repeats the bad row


def test_tolerance_and_pose_rows(tmp_path):
    yaml_file = _dataset(tmp_path, "train: images/train\nval: images/val\nnames: [a, b, c]\nkpt_shape: [1, 3]\n")
    _labels(tmp_path / "labels/train/a.txt", "0 1.005 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2 0.5 0.5 2\n")
    data = load_yolo_dataset(str(yaml_file))
    assert data.train.counts.tolist()[0] == 2
    assert any("1 pose row(s)" in w for w in data.warnings)
    boxes, _, _ = data.padded("train", 2)
    assert boxes[0, 0, 2] == 1  # clipped to the image


def test_yaml_errors(tmp_path):
    _dataset(tmp_path)
    yaml_file = tmp_path / "data.yaml"
    _raises([tmp_path / "missing.yaml", "not found", "yolo:"], load_yolo_dataset, f"yolo:{tmp_path / 'missing.yaml'}")
    cases = [
        ("train: [a\nval: b\n", ["not valid YAML", "line 2"]),
        ("- a\n- b\n", ["not a mapping"]),
        ("val: images/val\nnames: [a]\n", ["'train' is missing"]),
        ("train: images/train\nnames: [a]\n", ["'val' is missing"]),
        ("train: images/train\nval: images/val\n", ["neither 'names' nor 'nc'"]),
        ("train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n", ["'nc: 3' disagrees with the 2 'names'"]),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n", ["'names' keys [0, 2] must be 0..1"]),
        ("train: images/train\nval: images/val\nnames: []\n", ["'names' is empty"]),
        ("train: images/train\nval: images/val\nnc: two\n", ["'nc: two' must be an integer"]),
        ("train: images/train\nval: images/nope\nnames: [a, b, c]\n", ["split 'val'", "images/nope", "does not exist"]),
        ("train: labels/train\nval: images/val\nnames: [a, b, c]\n", ["labels/train", "holds no images"]),
        ("path: nowhere\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n", ["path: 'nowhere' not found"]),
    ]
    for text, expected in cases:
        yaml_file.write_text(text)
        _raises([yaml_file, *expected], load_yolo_dataset, str(yaml_file))
    (tmp_path / "val.txt").write_text("./images/val/v.png\n./images/val/gone.png\n")
    yaml_file.write_text("train: images/train\nval: val.txt\nnames: [a, b, c]\n")
    _raises([tmp_path / "val.txt", "line 2", "gone.png not found"], load_yolo_dataset, str(yaml_file))


def test_no_label_files_warns(tmp_path):
    _image(tmp_path / "images/train/a.png")
    _image(tmp_path / "images/val/b.png")
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    data = load_yolo_dataset(str(tmp_path / "data.yaml"))
    assert data.train.backgrounds == 1 and data.train.boxes.shape == (0, 4)
    assert sum("none of its 1 images has a label file" in w for w in data.warnings) == 2


def test_check_image_names_the_file(tmp_path):
    good = tmp_path / "good.png"
    _image(good, 20, 12)
    assert check_image(good) == (12, 20)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    _raises([broken, "not an image PIL can read"], check_image, broken)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-200])
    _raises([truncated, "corrupt"], check_image, truncated)
    tiny = tmp_path / "tiny.png"
    _image(tiny, 5, 40)
    _raises([tiny, "5x40 px"], check_image, tiny)
    _raises([tmp_path / "gone.png", "not found"], check_image, tmp_path / "gone.png")


def test_corrupt_image_in_dataset_is_named(tmp_path):
    yaml_file = _dataset(tmp_path)
    (tmp_path / "images/val/v.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = load_yolo_dataset(str(yaml_file))  # images are not opened at load
    _raises([tmp_path / "images/val/v.png"], data.image_sizes, "val")
    _raises([tmp_path / "images/val/v.png"], load_yolo_dataset, str(yaml_file), verify_images=True)


def test_max_boxes_error_names_the_image(tmp_path):
    data = load_yolo_dataset(str(_dataset(tmp_path)))
    _raises([tmp_path / "images/train/a.png", "2 boxes", "max_boxes=1", "raise config.max_boxes to at least 2"],
            data.padded, "train", 1)
