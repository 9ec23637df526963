"""Examples -> batch rows, per task: the host's share of the train augmentation (from the config's recipe) and the
eval transform (the model's serving transform, a `WeightsInfo`, so that a run is evaluated exactly as `predict.py`
will serve it).

Rows are what the host must produce, and no more: images are uint8 (S, S, 3), never normalised here (the jitted
step normalises on the device with the mean/std of `Preprocessing.eval_transform`, `device_augment.py`).
Classification `image`, `label` and, in training, `seed` (2,) uint32: the key of the example's device
augmentation (flip, AutoAugment / RandAugment, random erasing), drawn from the example's own seed; segmentation
`image` and `label` (S, S) int32; detection `image`, `boxes` (M, 4) xyxy pixels of the model input, `labels` (M,)
1-based (0 = padding) and `box_mask` (M,).  Detection recipes are named (`DETECTION_RECIPES`); 'auto' takes the
detection head's own (`train_recipe`: SSD 'ssdlite', YOLO 'yolo').
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import tensorflow as tf

from ..weights import WeightsInfo
from . import augment, dense_augment
from .sources import DatasetError, Example, Source

Row = dict[str, tf.Tensor]
TrainTransform = Callable[[Example, tf.Tensor], Row]
EvalTransform = Callable[[Example], Row]

# recipe name -> "module:function" with signature (source, config, size) -> train function (example, seed) ->
# uint8 detection row; imported when used
DETECTION_RECIPES = {
    "ssdlite": "transforms:_ssdlite_recipe",
    "ssd": "transforms:_ssd_recipe",
    "yolo": "yolo_transforms:train_recipe",
}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the pipeline knows of the model: its task, how it is served (eval transform at the run's image size,
    mean/std) and the detection augmentation recipe."""

    task: str
    eval_transform: WeightsInfo
    detection_recipe: str = "ssdlite"
    rect_stride: int = 0  # letterboxed eval in ultralytics' rectangular batches, sides multiples of this; 0: square

    @property
    def image_size(self) -> int:
        return self.eval_transform.crop_size


def device_seed(seed: tf.Tensor) -> tf.Tensor:
    """(2,) uint32 drawn from an example's stateless seed: the raw threefry key of its device augmentation."""
    return tf.bitcast(tf.random.stateless_uniform((2,), seed, minval=None, maxval=None, dtype=tf.int32), tf.uint32)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


# ---------------------------------------------------------------------------------------------- classification
def classification_eval_image(image: tf.Tensor, transform: WeightsInfo) -> tf.Tensor:
    """The serving transform up to normalisation: shorter side to `resize_size` (antialiased), center crop
    `crop_size`; or with resize_mode 'fixed' a plain resize to a square (small images: digits)."""
    size = transform.crop_size
    if transform.resize_mode == "fixed":
        return _to_uint8(tf.image.resize(image, (size, size), method=transform.interpolation, antialias=True))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    resize = float(transform.resize_size)
    scaled = tf.cast(tf.floor(shape * resize / tf.reduce_min(shape)), tf.int32)  # torchvision truncates
    scaled = tf.maximum(scaled, int(resize))
    image = tf.image.resize(image, scaled, method=transform.interpolation, antialias=True)
    top = tf.cast(tf.round(tf.cast(scaled[0] - size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(scaled[1] - size, tf.float32) / 2), tf.int32)
    return _to_uint8(image[top:top + size, left:left + size])


def _classification_train(config, transform: WeightsInfo) -> TrainTransform:
    """RandomResizedCrop (decoded from the file's bytes inside the window) or a plain resize; the rest of the
    recipe runs on the device from `seed`."""
    options, size = config.augment, transform.crop_size

    def train(example: Example, seed: tf.Tensor) -> Row:
        crop_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if options.random_resized_crop:
            image = augment.random_resized_crop(example["image"], size, options.crop_scale_min, crop_seed,
                                                antialias=options.crop_antialias)
        else:
            image = augment.resize_whole(example["image"], size)
        return {"image": image, "label": example["label"], "seed": device_seed(augment_seed)}

    return train


# ---------------------------------------------------------------------------------------------------- dense
def _ssdlite_recipe(source: Source, config, size: int) -> TrainTransform:
    return lambda example, seed: dense_augment.ssdlite_train(example["image"], example["boxes"], example["labels"],
                                                             seed, size=size)


def _ssd_recipe(source: Source, config, size: int) -> TrainTransform:
    return lambda example, seed: dense_augment.ssd_train(example["image"], example["boxes"], example["labels"],
                                                         seed, size=size)


def _import(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def _detection_eval(transform: WeightsInfo) -> EvalTransform:
    if transform.resize_mode == "letterbox":
        from .yolo_transforms import letterbox_eval

        return letterbox_eval(transform.crop_size)
    size = transform.crop_size
    return lambda example: dense_augment.detection_eval(example["image"], example["boxes"], example["labels"],
                                                        size=size)


def _finish_detection(row: Row) -> Row:
    return {"image": row["image"], "boxes": row["boxes"],
            "labels": tf.cast(row["labels"], tf.int32), "box_mask": row["box_mask"]}


def _finish_segmentation(row: Row) -> Row:
    return {"image": row["image"], "label": tf.cast(row["mask"], tf.int32)}


# ------------------------------------------------------------------------------------------------- per task
def train_transform(source: Source, config, preprocessing: Preprocessing) -> TrainTransform:
    """(example, seed) -> the task's training row, augmented as configured."""
    task, transform = preprocessing.task, preprocessing.eval_transform
    size = transform.crop_size
    if task == "classification":
        return _classification_train(config, transform)
    if task == "segmentation":
        options = config.augment
        base_size = options.base_size or size  # torchvision: 520, random-resized around it, crop 480
        return lambda example, seed: _finish_segmentation(dense_augment.segmentation_train(
            example["image"], example["mask"], seed, base_size=base_size, crop_size=size,
            scale=tuple(options.scale_range)))
    recipe = preprocessing.detection_recipe
    if recipe not in DETECTION_RECIPES:
        raise DatasetError(f"config.augment.detection_recipe={recipe!r}: use 'auto' (the detection head's own), "
                           f"{', '.join(map(repr, DETECTION_RECIPES))}")
    augment_example = _import(DETECTION_RECIPES[recipe])(source, config, size)
    return lambda example, seed: _finish_detection(augment_example(example, seed))


def eval_transform(preprocessing: Preprocessing) -> EvalTransform:
    """example -> the task's eval row, through the model's serving transform."""
    task, transform = preprocessing.task, preprocessing.eval_transform
    if task == "classification":
        return lambda example: {"image": classification_eval_image(example["image"], transform),
                                "label": example["label"]}
    if task == "segmentation":
        size = transform.crop_size
        return lambda example: _finish_segmentation(
            dense_augment.segmentation_eval(example["image"], example["mask"], size))
    detection_eval = _detection_eval(transform)
    return lambda example: _finish_detection(detection_eval(example))
