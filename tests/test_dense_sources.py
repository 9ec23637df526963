"""The dense datasets on disk and in TFDS: COCO- and VOC-format folders built here (a few tiny images with hand-known
boxes and masks), and TFDS coco/2017 and voc/2007 through `tfds.testing.mock_data` with examples written here."""
import json

import numpy as np
import pytest
from PIL import Image

from flax_mobilenet.training.experiment import Experiment
from flax_mobilenet.training.sources import DatasetError, datasets_for
from flax_mobilenet.weights import COCO_LABELS, VOC_LABELS
from test_dense_training import _config

DETECTION, SEGMENTATION = "configs/ssdlite_shapes.py", "configs/lraspp_shapes.py"


def _image(path, width, height, shade):
    rng = np.random.default_rng(shade)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[..., 0] = shade  # tells the examples apart after any resize
    Image.fromarray(pixels).save(path)


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask):
    """COCO's uncompressed RLE (column-major runs, starting with zeros), as crowd annotations store it."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"counts": np.diff(np.concatenate([[0], changes])).tolist(), "size": list(mask.shape)}


def _coco(root):
    """train2017: t1 (person, kept), t2 (a small dog and a big non-VOC object: detection only), t3 (only a 1-px box:
    dropped), t4 (nothing: dropped), t5..t10 (a person each); val2017: v1 64x48 (a person, a crowd, a degenerate
    box), v2 48x48 (dog and car overlapping, a crowd person, a non-VOC object), v3 (nothing)."""
    (root / "annotations").mkdir(parents=True)
    splits = {"train2017": [("t1", 64, 48, [(1, [4, 4, 30, 40])]),
                            ("t2", 48, 48, [(18, [4, 4, 20, 20]), (10, [0, 0, 48, 42])]),
                            ("t3", 40, 40, [(3, [5, 5, 1, 20])]), ("t4", 32, 32, [])]
              + [(f"t{i}", 40 + i, 44, [(1, [i, 2, 32, 36])]) for i in range(5, 11)],
              "val2017": [("v1", 64, 48, [(1, [8, 4, 20, 30]), (3, [50, 10, 0, 5])]),
                          ("v2", 48, 48, [(18, [10, 10, 20, 20]), (3, [26, 26, 14, 14]), (10, [0, 40, 8, 8])]),
                          ("v3", 40, 56, [])]}
    crowds = {"v1": np.zeros((48, 64), bool), "v2": np.zeros((48, 48), bool)}
    crowds["v1"][30:40, 40:60] = True
    crowds["v2"][0:5, 40:48] = True
    categories = [{"id": i, "name": COCO_LABELS[i], "supercategory": ""} for i in (1, 3, 10, 18)]
    ann_id = 0
    for split, images in splits.items():
        (root / split).mkdir()
        data = {"images": [], "annotations": [], "categories": categories}
        for image_id, (name, width, height, objects) in enumerate(images, 1):
            _image(root / split / f"{name}.png", width, height, 10 * image_id + (split == "val2017"))
            data["images"].append({"id": image_id, "file_name": f"{name}.png", "width": width, "height": height})
            for category, (x, y, w, h) in objects:
                ann_id += 1
                data["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": category,
                                            "iscrowd": 0, "bbox": [x, y, w, h], "area": w * h,
                                            "segmentation": _rect(x, y, x + w, y + h)})
            if name in crowds:
                ann_id += 1
                ys, xs = np.nonzero(crowds[name])
                data["annotations"].append({
                    "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 1, "area": int(crowds[name].sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                    "segmentation": _rle(crowds[name])})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [7 * i % 256 for i in range(3 * 253)]  # index -> RGB, 256 entries


def _voc(root):
    """Detection: train a..f (a dog each, plus a difficult cat in a), val g 60x40 (a dog, a difficult cat);
    segmentation: train s0..s3, val sv, 48x48 masks with a person, an aeroplane and 255 borders."""
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    sizes = {name: (40 + 2 * i, 36) for i, name in enumerate("abcdef")}
    sizes["g"] = (60, 40)
    for i, (name, (width, height)) in enumerate(sizes.items()):
        _image(root / "JPEGImages" / f"{name}.jpg", width, height, 20 * i)
        objects = [("dog", 0, (11, 6, 30, 25))] + ([("cat", 1, (2, 2, 9, 9))] if name in "ag" else [])
        xml = "".join(f"<object><name>{label}</name><pose>Left</pose><truncated>0</truncated>"
                      f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                      f"<ymax>{y1}</ymax></bndbox></object>" for label, difficult, (x0, y0, x1, y1) in objects)
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{xml}</annotation>")
    for i, name in enumerate(["s0", "s1", "s2", "s3", "sv"]):
        _image(root / "JPEGImages" / f"{name}.jpg", 48, 48, 200 + 10 * i)
        mask = np.zeros((48, 48), np.uint8)
        mask[9:21, 9:31] = 255  # VOC's border ring
        mask[10:20, 10:30] = 15  # person
        mask[30:40, 5:15] = 1  # aeroplane
        png = Image.fromarray(mask, mode="P")
        png.putpalette(VOC_PALETTE)
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Main/train.txt").write_text("a\nb\nc\nd\ne\nf\n")
    (root / "ImageSets/Main/val.txt").write_text("g\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("s0\ns1\ns2\ns3\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("sv\n")
    return root


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return _coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return _voc(tmp_path_factory.mktemp("VOC2012"))


def _eval(config, batch=2, process_index=0, process_count=1):
    return list(Experiment(config).pipeline.eval_batches(global_batch_size=batch, process_index=process_index,
                                            process_count=process_count))


def _assert_resumes(config, steps=6, batch=2):
    """Batch k is the same from start_step=k as after k batches from 0 (here across an epoch boundary)."""
    stream = Experiment(config).pipeline.train_batches(global_batch_size=batch, process_index=0, process_count=1)
    straight = [next(stream) for _ in range(steps)]
    resumed = next(Experiment(config).pipeline.train_batches(global_batch_size=batch, process_index=0, process_count=1,
                                                start_step=steps - 1))
    for key in straight[-1]:
        np.testing.assert_array_equal(straight[-1][key], resumed[key], err_msg=key)
    return straight


# ------------------------------------------------------------------------------------------------------------ COCO
def test_coco_detection_boxes_crowds_and_training_filter(coco_root):
    config = _config(DETECTION, dataset=f"coco:{coco_root}", image_size=32, max_boxes=5)
    info = Experiment(config).info
    assert (info.num_classes, info.class_names, info.tasks) == (91, COCO_LABELS, ("detection",))
    assert (info.num_train, info.num_eval, info.train_split, info.eval_split) == (8, 3, "train2017", "val2017")
    first, second = _eval(config)
    assert first["boxes"].shape == (2, 5, 4) and first["image"].shape == (2, 32, 32, 3)
    assert first["mask"].tolist() == [1, 1] and second["mask"].tolist() == [1, 0]
    # v1 (64x48): the person [8, 4, 20, 30] xywh, plainly resized to 32x32; its crowd and 0-wide box are left out
    np.testing.assert_allclose(first["boxes"][0, 0], [8 * 32 / 64, 4 * 32 / 48, 28 * 32 / 64, 34 * 32 / 48], rtol=1e-6)
    np.testing.assert_array_equal(first["labels"][0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(first["box_mask"][0], [True, False, False, False, False])
    assert (first["boxes"][0, 1:] == 0).all()
    np.testing.assert_array_equal(first["labels"][1], [18, 3, 10, 0, 0])  # v2: dog, car, a non-VOC category
    assert not second["box_mask"].any()  # v3 has no objects (and the padding row none either)


def test_coco_detection_batches_resume_exactly(coco_root):
    config = _config(DETECTION, dataset=f"coco:{coco_root}", image_size=32, max_boxes=4)
    batches = _assert_resumes(config)
    for batch in batches:
        valid = batch["box_mask"]
        assert batch["labels"].shape == (2, 4) and (valid == (batch["labels"] > 0)).all()
        assert (batch["boxes"][valid][:, 2:] > batch["boxes"][valid][:, :2]).all() and (batch["boxes"] <= 32).all()
        assert set(np.unique(batch["labels"])) <= {0, 1, 10, 18}  # t3's 1-px car never makes it in


def test_coco_segmentation_masks_from_polygons_and_rle(coco_root):
    config = _config(SEGMENTATION, dataset=f"coco:{coco_root}", image_size=48)
    info = Experiment(config).info
    assert (info.num_classes, info.class_names, info.tasks) == (21, VOC_LABELS, ("segmentation",))
    assert (info.num_train, info.num_eval) == (7, 3)  # t2 (400 px of dog), t3, t4 have <= 1000 px of VOC classes
    first, second = _eval(config)
    label = first["label"][1]  # v2 is 48x48: the eval resize keeps the mask as it is
    assert (label[12:28, 12:26] == VOC_LABELS.index("dog")).all()
    assert (label[27:29, 27:29] == 255).all()  # dog and car overlap: torchvision's ignore
    assert (label[32:38, 32:38] == VOC_LABELS.index("car")).all()
    assert (label[0:4, 41:47] == VOC_LABELS.index("person")).all()  # the crowd region counts, as in torchvision
    assert (label[42:47, 1:7] == 0).all()  # traffic light (COCO 10) is not a VOC class
    assert (label[35:, 10:25] == 0).all() and (label[:8, :8] == 0).all()
    assert (second["label"][0] == 0).all() and second["mask"].tolist() == [1, 0]


def test_coco_segmentation_batches_resume_exactly(coco_root):
    config = _config(SEGMENTATION, dataset=f"coco:{coco_root}", image_size=32)
    config.augment.base_size = 40
    batches = _assert_resumes(config, steps=5)
    assert all(set(np.unique(b["label"])) <= {0, 15, 255} for b in batches)
    assert any((b["label"] == 15).any() for b in batches)


# ------------------------------------------------------------------------------------------------------------- VOC
def test_voc_detection_boxes_and_difficult_objects(voc_root):
    config = _config(DETECTION, dataset=f"voc:{voc_root}", image_size=32, max_boxes=3)
    info = Experiment(config).info
    assert (info.num_classes, info.class_names, info.num_train, info.num_eval) == (21, VOC_LABELS, 6, 1)
    (batch,) = _eval(config)
    # g (60x40): the dog's 1-based inclusive corners (11, 6)-(30, 25) are pixels 10..29 x 5..24; the cat is difficult
    np.testing.assert_allclose(batch["boxes"][0, 0], [10 * 32 / 60, 5 * 32 / 40, 30 * 32 / 60, 25 * 32 / 40], rtol=1e-6)
    np.testing.assert_array_equal(batch["labels"][0], [VOC_LABELS.index("dog"), 0, 0])
    assert batch["mask"].tolist() == [1, 0]
    for train_batch in _assert_resumes(config, steps=4, batch=4):
        assert set(np.unique(train_batch["labels"])) <= {0, VOC_LABELS.index("dog")}  # never the difficult cat


def test_voc_segmentation_reads_palette_indices(voc_root):
    config = _config(SEGMENTATION, dataset=f"voc:{voc_root}", image_size=48)
    info = Experiment(config).info
    assert (info.num_classes, info.num_train, info.num_eval, info.tasks) == (21, 4, 1, ("segmentation",))
    (batch,) = _eval(config)
    expected = np.zeros((48, 48), np.int32)
    expected[9:21, 9:31] = 255
    expected[10:20, 10:30] = 15
    expected[30:40, 5:15] = 1
    np.testing.assert_array_equal(batch["label"][0], expected)  # indices, not the palette's RGB
    for train_batch in _assert_resumes(config, steps=3):
        assert set(np.unique(train_batch["label"])) <= {0, 1, 15, 255}


def test_eval_covers_every_example_once_over_processes(coco_root):
    config = _config(DETECTION, dataset=f"coco:{coco_root}", image_size=32, max_boxes=5)
    single = _eval(config, batch=2)
    shards = [_eval(config, batch=2, process_index=i, process_count=2) for i in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2  # equal batch counts on every process

    def real(batches):
        return sorted(tuple(b["labels"][i]) + (round(float(b["image"][i, ..., 0].mean()), 4),)
                      for b in batches for i in np.flatnonzero(b["mask"]))

    assert real(single) == real(shards[0] + shards[1]) and len(real(single)) == 3
    assert sum(b["mask"].sum() for b in shards[0] + shards[1]) == 3


# ------------------------------------------------------------------------------------------------------------ TFDS
def _tfds_examples(name):
    """split -> examples with encoded images and `objects` as TFDS stores them (bbox ymin, xmin, ymax, xmax in
    [0, 1]; labels 0-based); the first eval example is the 64x48 image with a person at [8, 4, 28, 34] xyxy."""
    import io

    def encoded(width, height, shade):
        buffer = io.BytesIO()
        Image.fromarray(np.full((height, width, 3), shade, np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    flag = "is_crowd" if name.startswith("coco") else "is_difficult"
    person = [4 / 48, 8 / 64, 34 / 48, 28 / 64]
    examples = {"eval": [
        (encoded(64, 48, 10), [person, [0.5, 0.5, 0.9, 0.9]], [0, 2], [False, True]),
        (encoded(40, 40, 20), np.zeros((0, 4)), [], [])]}
    examples["train"] = [(encoded(40 + i, 36, 30 + i), [[0.1, 0.2, 0.6, 0.7]], [i % 3], [False]) for i in range(6)]
    return flag, examples


def _mock_tfds(name):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    flag, examples = _tfds_examples(name)

    def as_dataset(self, split, **kwargs):
        base = str(getattr(split, "split", split))  # tfds.even_splits' _EvenSplit names its split
        rows = examples["train" if base.startswith("train") else "eval"]
        signature = {"image": tf.TensorSpec([], tf.string), "objects": {
            "bbox": tf.TensorSpec([None, 4], tf.float32), "label": tf.TensorSpec([None], tf.int64),
            flag: tf.TensorSpec([None], tf.bool)}}
        def generate():
            for image, boxes, labels, flags in rows:
                objects = {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
                           "label": np.asarray(labels, np.int64), flag: np.asarray(flags, bool)}
                yield {"image": image, "objects": objects}

        ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return ds.apply(tf.data.experimental.assert_cardinality(len(rows)))

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


@pytest.mark.parametrize("name,num_classes", [("coco/2017", 81), ("voc/2007", 21)])
def test_tfds_detection(name, num_classes):
    config = _config(DETECTION, dataset=name, image_size=32, max_boxes=3)
    with _mock_tfds(name):
        info = Experiment(config).info
        assert (info.num_classes, info.tasks, info.class_names[0]) == (num_classes, ("detection",), "__background__")
        if name.startswith("voc"):
            assert info.class_names == VOC_LABELS
        (batch,) = _eval(config)
        np.testing.assert_allclose(batch["boxes"][0, 0], [4, 4 * 32 / 48, 14, 34 * 32 / 48], rtol=1e-5)
        np.testing.assert_array_equal(batch["labels"], [[1, 0, 0], [0, 0, 0]])  # the crowd / difficult one is out
        assert batch["mask"].tolist() == [1, 1]
        batches = _assert_resumes(config, steps=4, batch=2)
        assert all(set(np.unique(b["labels"])) <= {0, 1, 2, 3} for b in batches)


def test_tfds_detection_datasets_refuse_segmentation_models():
    config = _config(SEGMENTATION, dataset="coco/2017", image_size=32)
    with _mock_tfds("coco/2017"), pytest.raises(DatasetError, match="no segmentation masks.*'coco:/path/to/coco'"):
        Experiment(config).info


# ---------------------------------------------------------------------------------------------------------- errors
def test_errors_name_the_path_and_what_to_do(tmp_path, coco_root, voc_root):
    def error(dataset, path=DETECTION):
        with pytest.raises(DatasetError) as info:
            Experiment(_config(path, dataset=dataset, image_size=32)).info
        return str(info.value)

    assert "is not a folder" in error(f"coco:{tmp_path / 'nowhere'}") and "--config.dataset=coco:" in error(
        f"coco:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    message = error(f"coco:{tmp_path / 'empty'}")
    assert "instances_train2017.json not found" in message and "annotations_trainval2017.zip" in message
    assert "ImageSets/Segmentation/train.txt not found" in error(f"voc:{tmp_path / 'empty'}", SEGMENTATION)
    assert "ImageSets/Main/train.txt not found" in error(f"voc:{tmp_path / 'empty'}")

    broken = _voc(tmp_path / "broken")
    (broken / "JPEGImages" / "c.jpg").unlink()
    message = error(f"voc:{broken}")
    assert "1 of the 6 files listed in" in message and "c.jpg" in message and str(broken / "JPEGImages") in message

    with pytest.raises(DatasetError, match="more than config.max_boxes=2"):
        Experiment(_config(DETECTION, dataset=f"coco:{coco_root}", image_size=32, max_boxes=2)).info
    with pytest.raises(DatasetError, match="not for a classification model"):
        config = _config("configs/v3_small_digits.py", dataset=f"voc:{voc_root}")
        Experiment(config).info
    assert "coco:/path/to/coco" in datasets_for("segmentation")
    assert "'coco/2017'" in datasets_for("detection")
