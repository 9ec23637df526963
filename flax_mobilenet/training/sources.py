"""Datasets as one protocol, `Source`: for each split ('train', 'eval') its size and a reader (example index ->
example, in TF graph ops), plus the dataset's `DatasetInfo` (tasks its labels train, class names).

Examples are dicts of tensors: every one has `image` (H, W, 3) uint8 RGB of any size; classification adds `label`
(int32); segmentation and detection add `mask` (H, W) uint8 class ids (255 = ignore; (0, 0) when the dataset has
none), `boxes` (M, 4) float32 xyxy pixels and `labels` (M,) int32, 1-based (0 = the padding rows up to a fixed M).

`open_source(config)` builds a run's source once (a folder is listed once, COCO's annotations parsed once).  The
kinds are told apart by the dataset name's prefix (`SOURCE_KINDS`); a new kind is one file with one entry there.
TFDS datasets are read sequentially by file shards, not by index (`TfdsSource` overrides the epoch methods);
`prepare.py`'s shards fetch their records several to a call (`PreparedSource` overrides `read_rows`).
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import importlib
import math
import weakref
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from . import shapes

tf.config.set_visible_devices([], "GPU")  # the accelerators belong to JAX

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}  # what tf.io.decode_image reads
SPLITS = ("train", "eval")
Example = dict[str, tf.Tensor]
Reader = Callable[[tf.Tensor], Example]


class DatasetError(ValueError):
    """A dataset that cannot be read, named with what to do about it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int  # detection: the background (class 0) included, as torchvision counts
    num_train: int
    num_eval: int
    train_split: str
    eval_split: str
    class_names: tuple[str, ...] = ()  # label index -> name (written to the run's model.json)
    tasks: tuple[str, ...] = ("classification",)  # what its labels can train


@dataclasses.dataclass(frozen=True)
class EpochRows:
    """Which rows of `epochs` consecutive epochs, from `epoch` on, this process reads: per epoch `steps` global
    batches of `local_batch * process_count` examples, the first epoch starting after `skip` batches.  Several
    epochs are one dataset so that a short epoch does not drain and refill the pipeline's prefetching."""

    epoch: int
    skip: int
    steps: int
    local_batch: int
    process_index: int
    process_count: int
    epochs: int = 1

    def positions(self, epoch: int) -> np.ndarray:
        """This process's positions in `epoch`'s order (one of this object's epochs), in reading order."""
        global_batch = self.local_batch * self.process_count
        positions = np.arange(self.steps * global_batch).reshape(self.steps, self.process_count, self.local_batch)
        return positions[self.skip if epoch == self.epoch else 0:, self.process_index].reshape(-1)


def epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}".encode()).digest()[:4], "little")


def example_seed(seed: int, epoch: int, position: tf.Tensor) -> tf.Tensor:
    """The stateless seed of the example at `position` of `epoch`: the same whenever that batch is produced (its
    second word's high half is the epoch)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * 2**32 + tf.cast(position, tf.int64)])


class Source:
    """An indexed dataset: `size(split)` examples, `reader(split)(index)` the example.  Subclasses define those
    two (and `files` when the images are files on disk, to name an unreadable one)."""

    info: DatasetInfo
    indexed = True  # random access by index (what mosaic needs to draw other examples)

    def size(self, split: str) -> int:
        return self.info.num_train if split == "train" else self.info.num_eval

    def reader(self, split: str) -> Reader:
        raise NotImplementedError

    def files(self, split: str) -> Optional[np.ndarray]:
        return None

    def encoded_reader(self, split: str) -> Optional[Reader]:
        """Like `reader`, with `image` the file's encoded bytes (a scalar string) when the images are files, so that
        a transform can decode only what it keeps (a JPEG's crop window); None: the source has decoded images only."""
        return None

    def numpy_reader(self, split: str) -> Callable[[int], dict[str, np.ndarray]]:
        """index -> the example as NumPy, for augmentations that read other examples (mosaic); by default the
        graph reader run eagerly."""
        read = self.reader(split)
        return lambda index: {k: v.numpy() for k, v in read(tf.constant(index, tf.int64)).items()}

    def train_examples(self, rows: EpochRows, seed: int, encoded: bool = False) -> tf.data.Dataset:
        """(example, its seed) for this process's rows of the epochs; each epoch's order ignores process_count.
        `encoded`: images as encoded bytes where the source has them (`encoded_reader`)."""
        indices, positions, epochs = [], [], []
        for epoch in range(rows.epoch, rows.epoch + rows.epochs):
            order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(self.size("train"))
            epoch_positions = rows.positions(epoch)
            indices.append(order[epoch_positions])
            positions.append(epoch_positions)
            epochs.append(np.full(len(epoch_positions), epoch))
        slices = tuple(np.concatenate(column) for column in (indices, positions, epochs))
        examples = self.read_rows(tf.data.Dataset.from_tensor_slices(slices), "train", encoded)
        return examples.map(lambda example, index, position, epoch: (
            {**example, "index": index}, example_seed(seed, epoch, position)), num_parallel_calls=tf.data.AUTOTUNE)

    def read_rows(self, rows: tf.data.Dataset, split: str, encoded: bool = False) -> tf.data.Dataset:
        """Rows (index, *fields) -> (example, index, *fields) of `split`; `encoded` as in `train_examples`."""
        read = (encoded and self.encoded_reader(split)) or self.reader(split)
        return rows.map(lambda index, *fields: (read(index), index, *fields), num_parallel_calls=tf.data.AUTOTUNE)

    def image_sizes(self, split: str) -> Optional[np.ndarray]:
        """(N, 2) (height, width) of the split's images when known without decoding them (rectangular eval
        batches need them), else None."""
        return None

    def eval_examples(self, local_batch: int, process_index: int, process_count: int,
                      order: Optional[np.ndarray] = None,
                      per_position: Optional[dict[str, np.ndarray]] = None) -> tf.data.Dataset:
        """(example, weight) of this process's rows of equally many global batches; padding rows weigh 0.
        `order`: the example at each position (default: in index order); `per_position`: more example fields,
        one value per position (a padding row takes the last one's)."""
        total = self.size("eval")
        global_batch = local_batch * process_count
        num_batches = math.ceil(total / global_batch)
        positions = np.arange(num_batches * global_batch).reshape(num_batches, process_count, local_batch)
        positions = positions[:, process_index].reshape(-1)
        real = np.minimum(positions, total - 1)
        indices = real if order is None else np.asarray(order)[real]
        extra = {k: np.asarray(v)[real] for k, v in (per_position or {}).items()}
        rows = tf.data.Dataset.from_tensor_slices((indices, (positions < total).astype(np.float32), extra))
        return self.read_rows(rows, "eval").map(lambda example, index, weight, fields: ({**example, **fields}, weight),
                                                num_parallel_calls=tf.data.AUTOTUNE)


def hold(arrays):
    """NumPy arrays (a dict, tuple or one) that a reader gathers from, held in TF variables: an array captured by a
    dataset's function is copied into its graph as a constant each time a pipeline is built (10 s for shapes' 131
    MB, and an ImageNet folder's file list is as large)."""
    return tf.nest.map_structure(lambda array: tf.Variable(array, trainable=False), arrays)


def decode_file(path: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image  # decoders already give RGB


# ------------------------------------------------------------------------------------------ classification
@dataclasses.dataclass
class LabelledImages(Source):
    """A classification dataset small enough to index: per split, decoded uint8 arrays (digits) or image file
    paths (folders), and int32 labels."""

    info: DatasetInfo
    train: tuple[np.ndarray, np.ndarray]
    eval: tuple[np.ndarray, np.ndarray]
    is_files: bool

    def reader(self, split: str) -> Reader:
        images, labels = hold(self.train if split == "train" else self.eval)
        load = decode_file if self.is_files else lambda x: x

        def read(index):
            return {"image": _to_rgb(load(tf.gather(images, index))), "label": tf.gather(labels, index)}

        return read

    def files(self, split: str) -> Optional[np.ndarray]:
        return (self.train if split == "train" else self.eval)[0] if self.is_files else None

    def encoded_reader(self, split: str) -> Optional[Reader]:
        if not self.is_files:
            return None
        paths, labels = hold(self.train if split == "train" else self.eval)
        return lambda index: {"image": tf.io.read_file(tf.gather(paths, index)), "label": tf.gather(labels, index)}


def digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as uint8 images, split 80/20 (stratified, fixed): (train, eval) pairs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # 16 gray levels -> uint8
    x_train, x_test, y_train, y_test = train_test_split(pixels, digits.target.astype(np.int32), test_size=0.2,
                                                        random_state=0, stratify=digits.target)
    return (x_train, y_train), (x_test, y_test)


def _digits(config, task: str = "") -> LabelledImages:
    train, evaluation = digits_arrays()
    info = DatasetInfo("digits", 10, len(train[1]), len(evaluation[1]), "train", "test", tuple(map(str, range(10))))
    return LabelledImages(info, train, evaluation, is_files=False)


def _list_images(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [label] * len(files)
    return np.array(paths), np.array(labels, np.int32)


def _folder(config, task: str = "") -> LabelledImages:
    name = config.dataset
    root = Path(name.split(":", 1)[1]).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset {name!r}: {root} is not a folder")
    eval_dir = next((root / d for d in ("val", "validation", "test") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and eval_dir is not None:
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not classes:
            raise DatasetError(f"{root / 'train'} has no class sub-folders")
        train, evaluation = _list_images(root / "train", classes), _list_images(eval_dir, classes)
        splits = ("train", eval_dir.name)
    else:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise DatasetError(f"{root} has no class sub-folders (expected one folder of images per class)")
        paths, labels = _list_images(root, classes)
        # a fixed 90/10 split by file name, stable when files are added elsewhere
        held_out = np.array([int(hashlib.sha1(str(Path(p).relative_to(root)).encode()).hexdigest(), 16) % 10 == 0
                             for p in paths])
        train, evaluation = (paths[~held_out], labels[~held_out]), (paths[held_out], labels[held_out])
        splits = ("train (90%)", "eval (10%)")
        if not held_out.any() or held_out.all():
            raise DatasetError(f"{root}: the 90/10 split of its {len(paths)} images leaves "
                               f"{'no eval' if not held_out.any() else 'no train'} images; add images, or put the "
                               f"splits in train/ and val/ sub-folders")
    info = DatasetInfo(name, len(classes), len(train[1]), len(evaluation[1]), *splits, tuple(classes))
    return LabelledImages(info, train, evaluation, is_files=True)


# ---------------------------------------------------------------------------------------------------- dense
@dataclasses.dataclass
class DenseArrays(Source):
    """A dense-prediction dataset held in memory: per split, `image` (N, S, S, 3) uint8, `mask` (N, S, S) uint8
    class ids, `boxes` (N, M, 4) xyxy pixels with `labels` (N, M) (0 = padding row)."""

    info: DatasetInfo
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]

    def reader(self, split: str) -> Reader:
        data = hold(self.train if split == "train" else self.eval)
        return lambda index: {k: tf.gather(data[k], index) for k in ("image", "mask", "boxes", "labels")}

    def numpy_reader(self, split: str) -> Callable[[int], dict[str, np.ndarray]]:
        data = self.train if split == "train" else self.eval
        return lambda index: {k: data[k][index] for k in ("image", "mask", "boxes", "labels")}

    def image_sizes(self, split: str) -> np.ndarray:
        images = (self.train if split == "train" else self.eval)["image"]
        return np.tile(np.array(images.shape[1:3]), (len(images), 1))


def _shapes(config, task: str = "") -> DenseArrays:
    return _shapes_arrays()


@functools.lru_cache(maxsize=1)
def _shapes_arrays() -> DenseArrays:
    """Generated once per process (about 3 s): the dataset is fixed, whatever the training seed."""
    keys = ("image", "mask", "boxes", "labels")
    train, evaluation = (shapes.load(split) for split in ("train", "validation"))
    info = DatasetInfo("shapes", shapes.NUM_CLASSES, len(train["image"]), len(evaluation["image"]), "train",
                       "validation", shapes.SHAPES_CLASSES, ("segmentation", "detection"))
    return DenseArrays(info, {k: train[k] for k in keys}, {k: evaluation[k] for k in keys})


# ---------------------------------------------------------------------------------------------------- kinds
# dataset name prefix -> "module:function" building its source from the config (imported when used)
SOURCE_KINDS = {
    "folder:": "sources:_folder",
    "coco:": "dense_sources:load",
    "voc:": "dense_sources:load",
    "yolo:": "yolo_dataset:load",
    "prepared:": "shards:load",
}
NAMED_SOURCES = {"digits": _digits, "shapes": _shapes}


def open_source(config, task: str) -> Source:
    """The run's dataset (config.dataset) read for a model of `task`; built once per run."""
    name = config.dataset
    if name in NAMED_SOURCES:
        return NAMED_SOURCES[name](config, task)
    for prefix, target in SOURCE_KINDS.items():
        if name.startswith(prefix):
            module, function = target.split(":")
            return getattr(importlib.import_module(f"{__package__}.{module}"), function)(config, task)
    from .tfds_source import TfdsSource

    return TfdsSource.open(config, task)


def datasets_for(task: str) -> str:
    """Which datasets train a task, as a hint for the error that names a mismatch."""
    if task == "classification":
        return "use 'digits', 'folder:/path/to/images' or a TFDS image-classification name"
    tfds_hint = " or TFDS 'coco/2017', 'voc/2007', 'voc/2012' (boxes only)" if task == "detection" else ""
    yolo_hint = "'yolo:/path/to/data.yaml' (ultralytics' format), " if task == "detection" else ""
    return (f"use 'shapes' (embedded, synthetic: boxes and masks of 5 classes), 'coco:/path/to/coco' (train2017/, "
            f"val2017/, annotations/), {yolo_hint}'voc:/path/to/VOCdevkit/VOC2012'{tfds_hint} for {task}")


# Pipelines being read: closed before the interpreter shuts down (atexit), because tearing down a pipeline with
# `tf.numpy_function` calls in flight (the crop's resize, YOLO's ops) during shutdown deadlocks: its workers wait for a
# GIL that a finalizing interpreter no longer hands out, and the teardown waits for them.
_OPEN_PIPELINES: "weakref.WeakSet[Iterator]" = weakref.WeakSet()


@atexit.register
def _close_open_pipelines() -> None:
    for batches in list(_OPEN_PIPELINES):
        try:
            batches.close()
        except ValueError:  # being read by another thread right now: nothing to do from here
            pass


def iterate_numpy(ds: tf.data.Dataset, files: Optional[np.ndarray] = None) -> Iterator[dict[str, np.ndarray]]:
    """The dataset as NumPy; an image TF cannot decode is named (TF's error does not say which file), and a
    `DatasetError` raised inside the pipeline (a `tf.numpy_function`) reaches the caller as itself."""
    batches = _numpy_batches(ds, files)
    _OPEN_PIPELINES.add(batches)
    return batches


def _numpy_batches(ds: tf.data.Dataset, files: Optional[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    try:
        yield from ds.as_numpy_iterator()
    except Exception as error:  # not `except tf.errors...`: at interpreter exit, closing needs no module globals
        if not isinstance(error, tf.errors.InvalidArgumentError):
            raise
        own = error.message.partition(f"{DatasetError.__name__}: ")[2]  # raised by a reader's tf.numpy_function
        if own:
            raise DatasetError(own.splitlines()[0]) from None
        raise DatasetError(f"cannot decode an image{_name_unreadable(files)}: "
                           f"{error.message.splitlines()[0]}") from None


def _name_unreadable(files: Optional[np.ndarray]) -> str:
    """Find the unreadable files (only after a failure, so no up-front scan)."""
    from PIL import Image

    bad = []
    for path in files if files is not None else ():
        try:
            with Image.open(path) as image:
                image.convert("RGB")
        except Exception:  # noqa: BLE001 - any failure to read means this is the file to name
            bad.append(str(path))
    return f" ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})" if bad else ""
