"""TFDS datasets (`tfds build`-prepared): image classification, and detection (coco/2017, voc/2007, ...: boxes only).

Read by file shards, one share per process (scalable on pods; the order therefore depends on process_count), not
by index: a TFDS source has no random access (`indexed = False`), so recipes that draw other examples (mosaic)
need a folder source.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from . import dense_sources
from .sources import DatasetError, DatasetInfo, EpochRows, Source, epoch_seed

_OBJECT_FIELDS = ("bbox", "label", "is_crowd", "is_difficult")  # what `dense_sources.tfds_boxes` reads


@dataclasses.dataclass
class TfdsSource(Source):
    info: DatasetInfo
    builder: Any
    detection: bool
    max_boxes: int
    shuffle_buffer_size: int
    indexed = False

    @classmethod
    def open(cls, config, task: str) -> "TfdsSource":
        import tensorflow_datasets as tfds

        def split_size(split: str) -> int:
            if split in builder.info.splits:
                return builder.info.splits[split].num_examples
            size = int(builder.as_dataset(split=split).cardinality())  # no split metadata (tfds.testing.mock_data)
            if size < 0:
                raise ValueError(f"the size of split {split!r} is unknown")
            return size

        try:
            builder = tfds.builder(config.dataset, data_dir=config.data_dir)
            train = config.train_split or "train"
            evaluation = config.eval_split or (
                "test" if builder.info.splits and "validation" not in builder.info.splits else "validation")
            num_train, num_eval = split_size(train), split_size(evaluation)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise DatasetError(f"unknown dataset {config.dataset!r}: use 'digits', 'folder:/path/to/images' (one "
                               f"sub-folder per class) or a TFDS image-classification name; for detection and "
                               f"segmentation 'shapes', 'coco:/path/to/coco', 'voc:/path/to/VOCdevkit/VOC2012', "
                               f"'yolo:/path/to/data.yaml' or TFDS 'coco/2017', 'voc/2007' (boxes only)") from error
        except (KeyError, ValueError, AssertionError) as error:
            raise DatasetError(f"TFDS dataset {config.dataset!r} is not prepared in {builder.data_dir}: nothing can "
                               f"be downloaded here; prepare it with `tfds build {config.dataset} --data_dir DIR` (or "
                               f"copy it there) and pass --config.data_dir=DIR ({error})") from error
        features = builder.info.features
        if dense_sources.is_tfds_detection(features):  # coco/2017, voc/2007, ...: boxes, labels 0-based
            if task == "segmentation":
                raise DatasetError(f"TFDS {config.dataset!r} has boxes but no segmentation masks: train a "
                                   f"segmentation model on 'coco:/path/to/coco' (COCO 2017 with its annotations "
                                   f"folder, torchvision's COCO-with-VOC-labels masks) or "
                                   f"'voc:/path/to/VOCdevkit/VOC2012' (SegmentationClass)")
            labels = features["objects"]["label"]
            info = DatasetInfo(config.dataset, labels.num_classes + 1, num_train, num_eval, train, evaluation,
                               ("__background__", *labels.names), ("detection",))
        elif "image" in features and "label" in features:
            info = DatasetInfo(config.dataset, features["label"].num_classes, num_train, num_eval, train,
                               evaluation, tuple(features["label"].names))
        else:
            raise DatasetError(f"{config.dataset!r} is not an image-classification dataset (needs 'image' and "
                               f"'label')")
        return cls(info, builder, "detection" in info.tasks, config.max_boxes, config.shuffle_buffer_size)

    def _example(self, example: dict, image: tf.Tensor) -> dict[str, tf.Tensor]:
        if not self.detection:
            return {"image": image, "label": tf.cast(example["label"], tf.int32)}
        shape = tf.shape(image)
        boxes, labels = dense_sources.tfds_boxes(example["objects"], shape[0], shape[1], self.max_boxes)
        return {"image": image, "mask": tf.zeros([0, 0], tf.uint8), "boxes": boxes, "labels": labels}

    def train_examples(self, rows: EpochRows, seed: int, encoded: bool = False) -> tf.data.Dataset:
        """As `Source.train_examples`; `encoded`: images stay the stored (encoded) bytes."""
        epochs = range(rows.epoch, rows.epoch + rows.epochs)
        return functools.reduce(tf.data.Dataset.concatenate,
                                [self._epoch_examples(rows, epoch, seed, encoded) for epoch in epochs])

    def _epoch_examples(self, rows: EpochRows, epoch: int, seed: int, encoded: bool) -> tf.data.Dataset:
        import tensorflow_datasets as tfds

        shuffle_seed = epoch_seed(seed, epoch)
        split = tfds.even_splits(self.info.train_split, n=rows.process_count, drop_remainder=True)[rows.process_index]
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, interleave_cycle_length=16)
        ds = self.builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.shuffle(min(self.shuffle_buffer_size, self.info.num_train), seed=shuffle_seed,
                        reshuffle_each_iteration=False)
        skip = rows.skip if epoch == rows.epoch else 0
        ds = ds.take(rows.steps * rows.local_batch).enumerate().skip(skip * rows.local_batch)

        def load(position, example):
            image = example["image"]
            if not encoded:
                image = tf.io.decode_image(image, channels=3, expand_animations=False)
            example_seed = tf.stack([tf.cast(seed, tf.int64),
                                     (tf.cast(epoch, tf.int64) * 2**16 + rows.process_index) * 2**32 + position])
            return self._example(example, image), example_seed

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    def eval_examples(self, local_batch: int, process_index: int, process_count: int,
                      order: Optional[np.ndarray] = None,
                      per_position: Optional[dict[str, np.ndarray]] = None) -> tf.data.Dataset:
        """This process's share of the eval split, then all-zero examples (weight 0) up to the batch count every
        process runs; in the split's order (no `image_sizes`, so no rectangular batches)."""
        import tensorflow_datasets as tfds

        if order is not None or per_position:
            raise ValueError("a TFDS source reads its eval split in order")

        target = "objects" if self.detection else "label"
        split = tfds.even_splits(self.info.eval_split, n=process_count, drop_remainder=False)[process_index]
        per_process = math.ceil(self.info.num_eval / process_count)
        num_batches = math.ceil(per_process / local_batch)
        ds = self.builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})

        def select(example):
            value = example[target]
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k in _OBJECT_FIELDS}
            return {"image": example["image"], target: value}, 1.0

        ds = ds.map(select)
        blank = tf.nest.map_structure(lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype),
                                      ds.element_spec[0])
        ds = ds.concatenate(tf.data.Dataset.from_tensors((blank, 0.0)).repeat()).take(num_batches * local_batch)

        def load(example, weight):
            image = tf.cond(weight > 0, lambda: tf.io.decode_image(example["image"], channels=3,
                                                                   expand_animations=False),
                            lambda: tf.zeros((1, 1, 3), tf.uint8))
            return self._example(example, image), weight

        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
