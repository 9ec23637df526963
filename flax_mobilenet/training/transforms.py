"""Examples -> batch rows, per task: the train augmentation (from the config's recipe) and the eval transform (the
model's serving transform, a `WeightsInfo`, so that a run is evaluated exactly as `predict.py` will serve it).

Rows (what `tasks.py` reads): classification `image` float32 (S, S, 3) normalised and `label`; segmentation `image`
and `label` (S, S) int32; detection `image`, `boxes` (M, 4) xyxy pixels of the model input, `labels` (M,) 1-based
(0 = padding) and `box_mask` (M,).  Detection recipes are named (`DETECTION_RECIPES`); 'auto' takes the
detection head's own (`train_recipe`: SSD 'ssdlite', YOLO 'yolo').
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import numpy as np
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


def normalize(image: tf.Tensor, transform: WeightsInfo) -> tf.Tensor:
    mean, std = np.asarray(transform.mean, np.float32), np.asarray(transform.std, np.float32)
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


# ---------------------------------------------------------------------------------------------- classification
def classification_eval_image(image: tf.Tensor, transform: WeightsInfo) -> tf.Tensor:
    """The serving transform: shorter side to `resize_size` (antialiased), center crop `crop_size`; or with
    resize_mode 'fixed' a plain resize to a square (small images: digits)."""
    size = transform.crop_size
    if transform.resize_mode == "fixed":
        resized = tf.image.resize(image, (size, size), method=transform.interpolation, antialias=True)
        return normalize(tf.round(tf.clip_by_value(resized, 0, 255)), transform)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    resize = float(transform.resize_size)
    scaled = tf.cast(tf.floor(shape * resize / tf.reduce_min(shape)), tf.int32)  # torchvision truncates
    scaled = tf.maximum(scaled, int(resize))
    image = tf.image.resize(image, scaled, method=transform.interpolation, antialias=True)
    top = tf.cast(tf.round(tf.cast(scaled[0] - size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(scaled[1] - size, tf.float32) / 2), tf.int32)
    image = tf.clip_by_value(image[top:top + size, left:left + size], 0, 255)
    return normalize(tf.round(image), transform)


def _classification_train(config, transform: WeightsInfo) -> TrainTransform:
    options, size = config.augment, transform.crop_size

    def train(example: Example, seed: tf.Tensor) -> Row:
        image = example["image"]
        seeds = tf.random.experimental.stateless_split(seed, 4)
        if options.random_resized_crop:
            image = augment.random_resized_crop(image, size, options.crop_scale_min, seeds[0])
        else:
            image = tf.image.resize(image, (size, size), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        if options.flip:
            image = tf.image.stateless_random_flip_left_right(image, seeds[1])
        if options.policy != "none":
            image = augment.apply_policy(image, options.policy, seeds[2], num_ops=options.randaugment_num_ops,
                                         magnitude=options.randaugment_magnitude)
        image = normalize(image, transform)
        if options.random_erasing:
            image = augment.random_erasing(image, options.random_erasing, seeds[3])
        return {"image": image, "label": example["label"]}

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


def _finish_detection(row: Row, transform: WeightsInfo) -> Row:
    return {"image": normalize(row["image"], transform), "boxes": row["boxes"],
            "labels": tf.cast(row["labels"], tf.int32), "box_mask": row["box_mask"]}


def _finish_segmentation(row: Row, transform: WeightsInfo) -> Row:
    return {"image": normalize(row["image"], transform), "label": tf.cast(row["mask"], tf.int32)}


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
            scale=tuple(options.scale_range)), transform)
    recipe = preprocessing.detection_recipe
    if recipe not in DETECTION_RECIPES:
        raise DatasetError(f"config.augment.detection_recipe={recipe!r}: use 'auto' (the detection head's own), "
                           f"{', '.join(map(repr, DETECTION_RECIPES))}")
    augment_example = _import(DETECTION_RECIPES[recipe])(source, config, size)
    return lambda example, seed: _finish_detection(augment_example(example, seed), transform)


def eval_transform(preprocessing: Preprocessing) -> EvalTransform:
    """example -> the task's eval row, through the model's serving transform."""
    task, transform = preprocessing.task, preprocessing.eval_transform
    if task == "classification":
        return lambda example: {"image": classification_eval_image(example["image"], transform),
                                "label": example["label"]}
    if task == "segmentation":
        size = transform.crop_size
        return lambda example: _finish_segmentation(
            dense_augment.segmentation_eval(example["image"], example["mask"], size), transform)
    detection_eval = _detection_eval(transform)
    return lambda example: _finish_detection(detection_eval(example), transform)
