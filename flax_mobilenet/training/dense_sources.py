"""Detection / segmentation datasets on disk (COCO- and Pascal-VOC-format folders) and TFDS detection features, as
the rows `input_pipeline` hands to `dense_augment`: a uint8 RGB image of any size, a uint8 class mask (255 =
ignore), float32 xyxy pixel boxes and int32 labels (0 = padding), padded to a fixed number of boxes.

Annotations are parsed once per process into flat arrays (the boxes of all images, image i owning rows
offsets[i]:offsets[i + 1]), so tf.data indexes them like the in-memory datasets; images and masks are read per
example inside the tf.data map.  Nothing depends on iteration state: an index always gives the same example, which
is what keeps the pipeline's order and augmentation seeds (and so resume) exact.

Conventions (torchvision's references, where they have one):

- COCO detection (references/detection `coco_utils`): crowd annotations skipped, boxes xywh -> xyxy clamped to
  the image, degenerate boxes dropped, labels = COCO category ids (91 classes with the background); training
  keeps only images with some annotation whose box is larger than 1 px each way.
- COCO segmentation (references/segmentation `coco_utils`, "COCO with VOC labels"): the instances (crowd ones
  included) of the 20 VOC categories, `CAT_LIST` remapped to 1..20, rasterised by pycocotools; a pixel covered by
  two instances is 255; training keeps images whose kept instances cover more than 1000 px.
- VOC: boxes from `Annotations/*.xml` (1-based inclusive pixel corners -> [xmin - 1, ymin - 1, xmax, ymax]),
  labels 1..20 in `VOC_LABELS` order, objects marked `difficult` left out of training and eval (the SSD / mmdet
  convention: VOC's metric ignores them); masks are `SegmentationClass/*.png` palette indices, 255 = border.
- TFDS (`coco/2017`, `voc/2007`, ...): `objects/bbox` (normalised ymin, xmin, ymax, xmax) to pixels,
  `objects/label` + 1 (0 stays the background), `is_crowd` / `is_difficult` objects skipped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from ..weights import COCO_LABELS, VOC_LABELS
from . import dense_augment
from .sources import DatasetError, DatasetInfo, Example, Source, hold

# torchvision's references/segmentation CAT_LIST: the COCO category id of each VOC class (index = VOC label)
COCO_VOC_CATEGORIES = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
MIN_SEGMENTATION_AREA = 1000  # torchvision: COCO training images whose kept instances cover fewer pixels are left out
DENSE_TASKS = ("segmentation", "detection")


@dataclasses.dataclass(frozen=True)
class Annotations:
    """One split: image files, their boxes as flat arrays with per-image offsets, and (segmentation) a mask
    function of the image index."""

    images: np.ndarray  # (N,) str paths
    boxes: np.ndarray  # (B, 4) float32 xyxy pixels
    labels: np.ndarray  # (B,) int32, >= 1
    offsets: np.ndarray  # (N + 1,) int64: image i owns boxes[offsets[i]:offsets[i + 1]]
    mask: Optional[Callable[[int], np.ndarray]] = None  # index -> (H, W) uint8 class ids, 255 = ignore

    def __len__(self) -> int:
        return len(self.images)

    def reader(self, max_boxes: int) -> Callable[[tf.Tensor], Example]:
        """index -> the example (image, mask, boxes, labels) in graph ops, boxes padded to `max_boxes` rows (no mask:
        (0, 0))."""
        paths, offsets, boxes, labels = hold((self.images, self.offsets, self.boxes.reshape(-1, 4), self.labels))
        mask_fn = self.mask

        def read(index: tf.Tensor) -> Example:
            image = tf.io.decode_image(tf.io.read_file(tf.gather(paths, index)), channels=3, expand_animations=False)
            start, end = offsets[index], offsets[index + 1]
            row_boxes, row_labels = dense_augment.pad_boxes(boxes[start:end], labels[start:end], max_boxes)
            if mask_fn is None:
                mask = tf.zeros([0, 0], tf.uint8)
            else:  # pycocotools / PIL: a pure function of the index, so deterministic in a parallel map
                mask = tf.numpy_function(lambda i: mask_fn(int(i)), [index], tf.uint8, stateful=False)
                mask = tf.ensure_shape(mask, [None, None])
            return {"image": image, "mask": mask, "boxes": row_boxes, "labels": row_labels}

        return read


@dataclasses.dataclass
class DenseFiles(Source):
    """A COCO or VOC folder read for one task (the class set differs: COCO detection has 91, segmentation 21)."""

    info: DatasetInfo
    train: Annotations
    eval: Annotations
    max_boxes: int

    def reader(self, split: str) -> Callable[[tf.Tensor], Example]:
        return (self.train if split == "train" else self.eval).reader(self.max_boxes)

    def files(self, split: str) -> np.ndarray:
        return (self.train if split == "train" else self.eval).images


def load(config, task: str) -> DenseFiles:
    """`coco:/path` or `voc:/path` (config.dataset) read for a model of `task`; splits from config.train_split /
    config.eval_split (COCO: 'train2017' / 'val2017'; VOC: 'train' / 'val')."""
    kind, _, path = config.dataset.partition(":")
    if task not in DENSE_TASKS:
        raise DatasetError(f"dataset {config.dataset!r} is a {' and '.join(DENSE_TASKS)} dataset, not for a {task} "
                           f"model: use 'digits', 'folder:/path/to/images' or a TFDS image-classification name")
    root = Path(path).expanduser()
    if not root.is_dir():
        example = ("coco:/data/coco (holding train2017/, val2017/, annotations/)" if kind == "coco" else
                   "voc:/data/VOCdevkit/VOC2012 (holding JPEGImages/, Annotations/, ImageSets/)")
        raise DatasetError(f"dataset {config.dataset!r}: {root} is not a folder; pass --config.dataset={example}")
    defaults = ("train2017", "val2017") if kind == "coco" else ("train", "val")
    splits = (config.train_split or defaults[0], config.eval_split or defaults[1])
    read = _coco_split if kind == "coco" else _voc_split
    root = str(root.resolve())
    train, evaluation = read(root, splits[0], task, train=True), read(root, splits[1], task, train=False)
    names = COCO_LABELS if kind == "coco" and task == "detection" else VOC_LABELS  # COCO segmentation: VOC's 20
    max_boxes = int(config.max_boxes) if task == "detection" else 0
    _check_box_counts(train, max_boxes, splits[0])
    _check_box_counts(evaluation, max_boxes, splits[1])
    info = DatasetInfo(config.dataset, len(names), len(train), len(evaluation), *splits, names, (task,))
    return DenseFiles(info, train, evaluation, max_boxes)


# ----------------------------------------------------------------------------------------------------- COCO
@functools.lru_cache(maxsize=4)
def _coco_split(root: str, split: str, task: str, train: bool) -> Annotations:
    """Parsed once per process (instances_train2017.json takes ~20 s and a few GB; segmentation keeps the COCO
    object for rasterising)."""
    images_dir = Path(root) / split
    annotation_file = Path(root) / "annotations" / f"instances_{split}.json"
    if not annotation_file.is_file():
        raise DatasetError(f"COCO annotations {annotation_file} not found: a COCO folder holds "
                           f"annotations/instances_{split}.json and {split}/ (the images); unpack "
                           f"annotations_trainval2017.zip there, or name other splits with --config.train_split / "
                           f"--config.eval_split")
    if not images_dir.is_dir():
        raise DatasetError(f"COCO images folder {images_dir} not found: unpack {split}.zip into {root}")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO(str(annotation_file))
    kept, all_boxes, all_labels, per_image = [], [], [], []
    for image_id in sorted(coco.imgs):
        annotations = coco.imgToAnns.get(image_id, [])
        meta = coco.imgs[image_id]
        if task == "detection":
            if train and not _coco_has_valid_box(annotations):
                continue
            boxes, labels = _coco_boxes(annotations, meta["width"], meta["height"])
            all_boxes.append(boxes)
            all_labels.append(labels)
        else:
            annotations = [a for a in annotations if a["category_id"] in COCO_VOC_CATEGORIES[1:]]
            if train and sum(a["area"] for a in annotations) <= MIN_SEGMENTATION_AREA:
                continue
            per_image.append((meta["height"], meta["width"], annotations))
        kept.append(meta["file_name"])
    images = _existing_files(images_dir, kept, f"listed in {annotation_file}")
    if task == "detection":
        return _annotations(images, all_boxes, all_labels)
    return dataclasses.replace(_annotations(images, [], []), mask=functools.partial(_coco_mask, coco, per_image))


def _coco_has_valid_box(annotations: list[dict]) -> bool:
    """torchvision's `_coco_remove_images_without_annotations` for boxes: some annotation (crowd ones count too)
    whose box is more than 1 px wide and high."""
    return any(all(side > 1 for side in a["bbox"][2:]) for a in annotations)


def _coco_boxes(annotations: list[dict], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's ConvertCocoPolysToMask for boxes: no crowds, xywh -> xyxy, clamped, degenerate ones dropped."""
    annotations = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    labels = np.array([a["category_id"] for a in annotations], np.int32)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    return boxes[keep], labels[keep]


def _coco_mask(coco, per_image: list[tuple[int, int, list[dict]]], index: int) -> np.ndarray:
    """torchvision's FilterAndRemapCocoCategories + ConvertCocoPolysToMask: each instance's pixels (pycocotools'
    annToMask: polygons or RLE) get its VOC class; pixels of two or more instances are 255."""
    height, width, annotations = per_image[index]
    if not annotations:
        return np.zeros((height, width), np.uint8)
    masks = np.stack([coco.annToMask(a) for a in annotations])
    classes = np.array([COCO_VOC_CATEGORIES.index(a["category_id"]) for a in annotations], np.uint8)
    target = (masks * classes[:, None, None]).max(axis=0)
    target[masks.sum(axis=0) > 1] = dense_augment.IGNORE
    return target.astype(np.uint8)


# ------------------------------------------------------------------------------------------------------ VOC
@functools.lru_cache(maxsize=4)
def _voc_split(root: str, split: str, task: str, train: bool) -> Annotations:
    """The ids of ImageSets/{Main|Segmentation}/<split>.txt with their XML boxes or palette masks."""
    del train  # VOC keeps every listed image (each has objects)
    base = Path(root)
    list_file = base / "ImageSets" / ("Segmentation" if task == "segmentation" else "Main") / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(f"VOC split file {list_file} not found: point --config.dataset=voc:... at a VOC year "
                           f"folder (VOCdevkit/VOC2012, holding ImageSets/, JPEGImages/, "
                           f"{'SegmentationClass' if task == 'segmentation' else 'Annotations'}/), or pick a split "
                           f"that exists with --config.train_split / --config.eval_split")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    images = _existing_files(base / "JPEGImages", [f"{i}.jpg" for i in ids], f"listed in {list_file}")
    if task == "segmentation":
        masks = _existing_files(base / "SegmentationClass", [f"{i}.png" for i in ids], f"listed in {list_file}")
        return dataclasses.replace(_annotations(images, [], []), mask=functools.partial(_palette_indices, masks))
    xmls = _existing_files(base / "Annotations", [f"{i}.xml" for i in ids], f"listed in {list_file}")
    parsed = [_voc_objects(Path(x)) for x in xmls]
    return _annotations(images, [b for b, _ in parsed], [c for _, c in parsed])


def _voc_objects(xml_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One VOC XML's non-difficult objects: boxes [xmin - 1, ymin - 1, xmax, ymax] (its corners are 1-based and
    inclusive) and labels 1..20."""
    boxes, labels = [], []
    for obj in ElementTree.parse(xml_file).getroot().iter("object"):
        difficult = obj.findtext("difficult")
        if difficult is not None and int(difficult.strip() or 0):
            continue
        name = (obj.findtext("name") or "").strip().lower()
        if name not in VOC_LABELS[1:]:
            raise DatasetError(f"{xml_file}: unknown VOC class {name!r} (known: {', '.join(VOC_LABELS[1:])})")
        box = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        labels.append(VOC_LABELS.index(name))
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int32)


def _palette_indices(masks: np.ndarray, index: int) -> np.ndarray:
    """A VOC SegmentationClass PNG's palette indices (0..20, 255 = border), not its RGB colours."""
    from PIL import Image

    with Image.open(masks[index]) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{masks[index]} is a {image.mode} image: VOC masks are palette PNGs of class indices")
        return np.asarray(image, np.uint8)


# ----------------------------------------------------------------------------------------------------- TFDS
def tfds_boxes(objects: dict[str, tf.Tensor], height: tf.Tensor, width: tf.Tensor, max_boxes: int
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """TFDS detection `objects` -> (max_boxes, 4) xyxy pixel boxes and labels + 1, crowd / difficult objects and
    degenerate boxes left out."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4)), axis=-1)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    boxes = tf.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=-1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    for flag in ("is_crowd", "is_difficult"):
        if flag in objects:
            keep &= ~tf.cast(objects[flag], tf.bool)
    labels = tf.cast(objects["label"], tf.int32) + 1
    return dense_augment.pad_boxes(tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep), max_boxes)


def is_tfds_detection(features) -> bool:
    """A TFDS FeaturesDict with `image` and `objects` holding `bbox` and `label` (coco, voc, ...)."""
    objects = features["objects"] if "objects" in features else None
    return "image" in features and objects is not None and "bbox" in objects and "label" in objects


# ---------------------------------------------------------------------------------------------------- shared
def _existing_files(folder: Path, names: list[str], listed: str) -> np.ndarray:
    """`folder / name` for each name; one directory listing (not a stat per file) finds the missing ones."""
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    missing = [n for n in names if n not in present]
    if missing:
        raise DatasetError(f"{len(missing)} of the {len(names)} files {listed} are missing from {folder} (e.g. "
                           f"{', '.join(missing[:3])}): unpack the complete dataset there, or fix the list")
    return np.array([str(folder / n) for n in names], dtype=str)


def _annotations(images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray]) -> Annotations:
    counts = [len(x) for x in labels] if labels else [0] * len(images)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat_boxes = np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
    flat_labels = np.concatenate(labels).astype(np.int32) if labels else np.zeros((0,), np.int32)
    return Annotations(images, flat_boxes.reshape(-1, 4), flat_labels, offsets)


def _check_box_counts(annotations: Annotations, max_boxes: int, split: str) -> None:
    if max_boxes and len(annotations):
        counts = np.diff(annotations.offsets)
        if counts.max() > max_boxes:
            worst = int(np.argmax(counts))
            raise DatasetError(f"{annotations.images[worst]} ({split}) has {counts[worst]} boxes, more than "
                               f"config.max_boxes={max_boxes}: raise --config.max_boxes (boxes beyond it would be "
                               f"dropped)")
