"""The 'yolo' detection recipe: ultralytics' `v8_transforms` (`yolo_augment.train_example`: mosaic, random
perspective, HSV, horizontal flip) inside the tf.data pipeline, and its eval letterbox.

The augmentation is NumPy + OpenCV (bit-exact to ultralytics' ops), run by `tf.numpy_function`; its Generator is
seeded by the example's (seed, epoch, position) seed, so batches stay deterministic and resumable.  Mosaic draws
three more examples from the whole train split: the source must be indexed (folders, COCO/VOC/YOLO, shapes), and
those are read through the source's own reader.  Mosaic is off for the last `close_mosaic` epochs.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from . import yolo_augment
from .sources import DatasetError, Example, Source

Row = dict[str, tf.Tensor]


def _valid(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = labels > 0
    return boxes[keep], labels[keep]


def _padded(boxes: np.ndarray, labels: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, 4) boxes and (rows,) labels, zero padding rows (label 0)."""
    if len(labels) > rows:
        raise ValueError(f"{len(labels)} boxes in one augmented image, more than the {rows} rows of a batch")
    out_boxes, out_labels = np.zeros((rows, 4), np.float32), np.zeros((rows,), np.int32)
    out_boxes[:len(labels)], out_labels[:len(labels)] = boxes, labels
    return out_boxes, out_labels


def _row(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, size: Optional[int], rows: int) -> Row:
    image = tf.ensure_shape(image, (size, size, 3))  # size None: a rectangular eval batch's own shape
    boxes, labels = tf.ensure_shape(boxes, (rows, 4)), tf.ensure_shape(labels, (rows,))
    return {"image": image, "boxes": boxes, "labels": labels, "box_mask": labels > 0}


def train_recipe(source: Source, config, size: int):
    """(example, seed) -> uint8 row of `size` x `size`, up to 4x the source's boxes per image (mosaic)."""
    if not source.indexed:
        raise DatasetError(f"the 'yolo' recipe's mosaic draws examples by index, which TFDS {source.info.name!r} "
                           f"cannot: use a folder dataset ('coco:', 'voc:', 'yolo:'), or "
                           f"--config.augment.detection_recipe=ssdlite")
    options = config.augment
    num_train = source.size("train")
    steps_per_epoch = max(num_train // config.batch_size, 1)
    epochs = (config.num_epochs if config.num_train_steps <= 0
              else math.ceil(config.num_train_steps / steps_per_epoch))
    last_mosaic_epoch = epochs - options.close_mosaic  # epochs from here on see single images
    read = source.numpy_reader("train")

    def read_numpy(index: int):
        example = read(index)
        return (example["image"], *_valid(example["boxes"], example["labels"]))

    def augment(index, image, boxes, labels, seed, rows):
        seed = [int(s) for s in seed]
        own = (image, *_valid(boxes, labels))
        out_image, out_boxes, out_labels = yolo_augment.train_example(
            lambda i: own if i == index else read_numpy(i), int(index), np.random.default_rng(seed), size=size,
            mosaic=options.mosaic > 0 and seed[1] >> 32 < last_mosaic_epoch, num_examples=num_train,
            translate=options.translate, scale=options.scale, hsv_h=options.hsv_h, hsv_s=options.hsv_s,
            hsv_v=options.hsv_v, fliplr=options.fliplr)
        return (out_image, *_padded(out_boxes, out_labels, int(rows)))

    def train(example: Example, seed: tf.Tensor) -> Row:
        rows = 4 * example["boxes"].shape[0]  # a mosaic holds the boxes of four images
        image, boxes, labels = tf.numpy_function(
            augment, [example["index"], example["image"], example["boxes"], example["labels"], seed, rows],
            (tf.uint8, tf.float32, tf.int32), stateful=False)
        return _row(image, boxes, labels, size, rows)

    return train


def letterbox_eval(size: int):
    """ultralytics' validation transform: the long side resized to `size` (its load_image), then LetterBox without
    upscaling to the example's `letterbox_shape` (its rectangular batch's (h, w)) or `size` x `size`, padded with
    grey 114; boxes follow."""

    def letterbox(image, boxes, labels, shape):
        valid = labels > 0
        resized, resized_boxes = yolo_augment.load_resized(image, boxes[valid], size)
        out, out_boxes, _ = yolo_augment.letterbox(resized, resized_boxes, tuple(int(s) for s in shape),
                                                   scaleup=False)
        all_boxes = np.zeros_like(boxes)
        all_boxes[valid] = out_boxes
        return out, all_boxes.astype(np.float32)

    def transform(example: Example) -> Row:
        shape = example.get("letterbox_shape", tf.constant([size, size], tf.int32))
        image, boxes = tf.numpy_function(letterbox, [example["image"], example["boxes"], example["labels"], shape],
                                         (tf.uint8, tf.float32), stateful=False)
        rows = example["boxes"].shape[0]
        return _row(image, boxes, tf.cast(example["labels"], tf.int32), None, rows)

    return transform
