"""A prepared dataset (`prepare.py`, `--config.dataset=prepared:DIR`): a folder, COCO, VOC or YOLO dataset written
once into ArrayRecord shards, read back as a `Source` with random access (so mosaic and exact resume work as on the
original).

The layout of DIR: `prepared.json` (what was prepared, from what, for which task, the shards of each split; written
last, so an interrupted `prepare.py` leaves no dataset that looks complete), `{split}-NNNNN-of-NNNNN.array_record`
(one serialized `tf.train.Example` per image, in the original source's index order) and `{split}.sizes.npy` (the
stored images' (height, width)).  A record holds `image` (encoded bytes) and, by task, `label`, or `boxes` (xyxy
pixels of the stored image, little-endian float32 bytes) with `labels` (1-based, int32 bytes), and `mask` (a PNG of
class ids; empty when the dataset has none).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from . import dense_augment
from .sources import DatasetError, DatasetInfo, Example, Reader, Source

FORMAT_VERSION = 1
METADATA_FILE = "prepared.json"
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record per chunk: random access; JPEG bytes do not compress
RECORDS_PER_FETCH = 32


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def sizes_name(split: str) -> str:
    return f"{split}.sizes.npy"


def encode_record(example: dict[str, Any], task: str) -> bytes:
    """One example (NumPy / bytes values, as `prepare.py` produces them) as a serialized tf.train.Example."""
    feature = tf.train.Feature

    def as_bytes(value: bytes) -> Any:
        return feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {"image": as_bytes(example["image"])}
    if task == "classification":
        features["label"] = feature(int64_list=tf.train.Int64List(value=[int(example["label"])]))
    else:
        features["mask"] = as_bytes(example["mask"])
        features["boxes"] = as_bytes(np.asarray(example["boxes"], "<f4").tobytes())
        features["labels"] = as_bytes(np.asarray(example["labels"], "<i4").tobytes())
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _record_spec(task: str) -> dict[str, Any]:
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    if task == "classification":
        spec["label"] = tf.io.FixedLenFeature([], tf.int64)
    else:
        spec.update({key: tf.io.FixedLenFeature([], tf.string) for key in ("mask", "boxes", "labels")})
    return spec


def _decode_mask(png: tf.Tensor) -> tf.Tensor:
    return tf.cond(tf.strings.length(png) > 0, lambda: tf.io.decode_png(png, channels=1)[..., 0],
                   lambda: tf.zeros([0, 0], tf.uint8))


@dataclasses.dataclass
class PreparedSource(Source):
    """The shards of DIR for the task they were prepared for.  ArrayRecord has no TF op: records are fetched by a
    NumPy call (the reads release the GIL), `RECORDS_PER_FETCH` at a time in the pipeline to share its fixed cost
    (~0.15 ms), and parsed and decoded in graph ops."""

    info: DatasetInfo
    root: Path
    metadata: dict[str, Any]
    max_boxes: int

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @functools.cached_property
    def _records(self) -> dict[str, Any]:
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        splits = self.metadata["splits"]
        return {split: ArrayRecordDataSource([str(self.root / name) for name in splits[split]["shards"]])
                for split in splits}

    def _fetch(self, split: str) -> Callable[[np.ndarray], np.ndarray]:
        records, root = self._records[split], self.root

        def record(index: int) -> bytes:
            try:
                return records[index]
            except RuntimeError as error:  # Riegeli's checksums: a damaged or truncated shard
                raise DatasetError(f"record {index} of {root}'s {split} shards cannot be read ({error}): the "
                                   f"shards are damaged; prepare the dataset again") from None

        return lambda indices: np.array([record(int(i)) for i in np.ravel(indices)], dtype=object).reshape(
            np.shape(indices))

    def _finisher(self, encoded: bool) -> Callable[[dict[str, tf.Tensor]], Example]:
        """A record's parsed fields -> the example (its image decoded unless `encoded`), boxes padded to max_boxes
        rows."""
        task, max_boxes = self.task, self.max_boxes

        def finish(fields: dict[str, tf.Tensor]) -> Example:
            image = fields["image"] if encoded else tf.io.decode_image(fields["image"], channels=3,
                                                                      expand_animations=False)
            if task == "classification":
                return {"image": image, "label": tf.cast(fields["label"], tf.int32)}
            boxes, labels = dense_augment.pad_boxes(tf.io.decode_raw(fields["boxes"], tf.float32),
                                                    tf.io.decode_raw(fields["labels"], tf.int32), max_boxes)
            return {"image": image, "mask": _decode_mask(fields["mask"]), "boxes": boxes, "labels": labels}

        return finish

    def _reader(self, split: str, encoded: bool) -> Reader:
        fetch, spec, finish = self._fetch(split), _record_spec(self.task), self._finisher(encoded)

        def read(index: tf.Tensor) -> Example:
            record = tf.ensure_shape(tf.numpy_function(fetch, [index], tf.string, stateful=False), [])
            return finish(tf.io.parse_single_example(record, spec))

        return read

    def reader(self, split: str) -> Reader:
        return self._reader(split, encoded=False)

    def encoded_reader(self, split: str) -> Optional[Reader]:
        return self._reader(split, encoded=True)

    def read_rows(self, rows: tf.data.Dataset, split: str, encoded: bool = False) -> tf.data.Dataset:
        """Records fetched and parsed `RECORDS_PER_FETCH` at a time, then decoded one by one."""
        fetch, spec, finish = self._fetch(split), _record_spec(self.task), self._finisher(encoded)

        def fetch_records(indices, *fields):
            records = tf.numpy_function(fetch, [indices], tf.string, stateful=False)
            return (tf.io.parse_example(tf.ensure_shape(records, indices.shape), spec), indices, *fields)

        fetched = rows.batch(RECORDS_PER_FETCH).map(fetch_records, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        return fetched.map(lambda parsed, *rest: (finish(parsed), *rest), num_parallel_calls=tf.data.AUTOTUNE)

    def numpy_reader(self, split: str) -> Callable[[int], dict[str, np.ndarray]]:
        """The graph's parse without its per-op eager cost (mosaic reads three more examples per image); images
        decoded by TF's decoder, as in the pipeline."""
        fetch, task, max_boxes = self._fetch(split), self.task, self.max_boxes

        def read(index: int) -> dict[str, np.ndarray]:
            fields = tf.train.Example.FromString(fetch(np.array(index))[()]).features.feature
            image = tf.io.decode_image(fields["image"].bytes_list.value[0], channels=3, expand_animations=False)
            example = {"image": image.numpy()}
            if task == "classification":
                return {**example, "label": np.int32(fields["label"].int64_list.value[0])}
            stored_labels = np.frombuffer(fields["labels"].bytes_list.value[0], "<i4")[:max_boxes]
            boxes, labels = np.zeros((max_boxes, 4), np.float32), np.zeros((max_boxes,), np.int32)
            labels[:len(stored_labels)] = stored_labels
            boxes[:len(stored_labels)] = np.frombuffer(fields["boxes"].bytes_list.value[0], "<f4").reshape(-1, 4)[
                :max_boxes]
            png = fields["mask"].bytes_list.value[0]
            mask = tf.io.decode_png(png, channels=1).numpy()[..., 0] if png else np.zeros((0, 0), np.uint8)
            return {**example, "mask": mask, "boxes": boxes, "labels": labels}

        return read

    def image_sizes(self, split: str) -> np.ndarray:
        return np.load(self.root / sizes_name(split))


def load(config, task: str) -> PreparedSource:
    """`--config.dataset=prepared:DIR`, as `prepare.py` wrote it."""
    root = Path(config.dataset.split(":", 1)[1]).expanduser()
    metadata_file = root / METADATA_FILE
    if not metadata_file.is_file():
        hint = (" (its shards are there: `prepare.py` did not finish; run it again)"
                if any(root.glob("*.array_record")) else "")
        raise DatasetError(f"dataset {config.dataset!r}: {metadata_file} does not exist{hint}; write a prepared "
                           f"dataset with `python prepare.py --config CONFIG --config.dataset=folder:/path/to/images "
                           f"--out {root}`")
    metadata = json.loads(metadata_file.read_text())
    if metadata.get("format") != FORMAT_VERSION:
        raise DatasetError(f"{metadata_file} is format {metadata.get('format')}, this version reads {FORMAT_VERSION}: "
                           f"prepare the dataset again")
    if metadata["task"] != task:
        raise DatasetError(f"dataset {config.dataset!r} was prepared from {metadata['source']!r} for "
                           f"{metadata['task']}, not for a {task} model: prepare it for this config into another "
                           f"folder (python prepare.py --config CONFIG --config.dataset={metadata['source']} --out DIR)")
    splits = metadata["splits"]
    missing = [name for split in splits.values() for name in split["shards"] if not (root / name).is_file()]
    if missing:
        raise DatasetError(f"dataset {config.dataset!r}: shards are missing ({', '.join(missing[:3])}): copy the "
                           f"whole folder, or prepare it again")
    max_boxes = int(config.max_boxes) if task == "detection" else 0
    most = max(split["max_boxes"] for split in splits.values())
    if max_boxes and most > max_boxes:
        raise DatasetError(f"dataset {config.dataset!r} has an image with {most} boxes, more than config.max_boxes="
                           f"{max_boxes}: raise --config.max_boxes (boxes beyond it would be dropped)")
    info = DatasetInfo(config.dataset, metadata["num_classes"], splits["train"]["count"], splits["eval"]["count"],
                       metadata["train_split"], metadata["eval_split"], tuple(metadata["class_names"]), (task,))
    return PreparedSource(info, root, metadata, max_boxes)
