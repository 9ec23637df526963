"""Input pipeline: TFDS datasets, the embedded `digits` and `shapes`, image folders, and COCO / Pascal VOC folders
(`dense_sources.py`) as deterministic, resumable batches, in the format of the model's task (see `tasks.py`).

Determinism is what makes resume exact: epoch e is shuffled with a seed derived from (seed, e), and every
random augmentation of an example is drawn from stateless ops seeded by (seed, epoch, position in epoch), so
batch k is the same whether the iterator started at 0 or at k.  TensorFlow is used only here, for tf.data.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from ..registry import model_spec, weights_info
from ..weights import WeightsInfo
from . import augment, dense_augment, shapes

tf.config.set_visible_devices([], "GPU")  # the accelerators belong to JAX

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}  # what tf.io.decode_image reads


class DatasetError(ValueError):
    """A dataset that cannot be read, named with what to do about it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    num_train: int
    num_eval: int
    train_split: str
    eval_split: str
    class_names: tuple[str, ...] = ()  # label index -> name (written to the run's model.json)
    tasks: tuple[str, ...] = ("classification",)  # what its labels can train


def datasets_for(task: str) -> str:
    """Which datasets train a task, as a hint for the error that names a mismatch."""
    if task == "classification":
        return "use 'digits', 'folder:/path/to/images' or a TFDS image-classification name"
    tfds_hint = " or TFDS 'coco/2017', 'voc/2007', 'voc/2012' (boxes only)" if task == "detection" else ""
    return (f"use 'shapes' (embedded, synthetic: boxes and masks of 5 classes), 'coco:/path/to/coco' (train2017/, "
            f"val2017/, annotations/), 'voc:/path/to/VOCdevkit/VOC2012'{tfds_hint} for {task}")


# ------------------------------------------------------------------------------------------------- sources
@dataclasses.dataclass
class _InMemory:
    """A dataset small enough to index: decoded arrays (digits) or file paths (folders), and labels."""

    info: DatasetInfo
    train: tuple[np.ndarray, np.ndarray]
    eval: tuple[np.ndarray, np.ndarray]
    is_files: bool


def _digits(config) -> _InMemory:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]  # 16 gray levels -> uint8
    x_train, x_test, y_train, y_test = train_test_split(pixels, digits.target.astype(np.int32), test_size=0.2,
                                                        random_state=0, stratify=digits.target)
    info = DatasetInfo("digits", 10, len(y_train), len(y_test), "train", "test", tuple(map(str, range(10))))
    return _InMemory(info, (x_train, y_train), (x_test, y_test), is_files=False)


def _list_images(root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += files
        labels += [label] * len(files)
    return np.array(paths), np.array(labels, np.int32)


def _folder(name: str) -> _InMemory:
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
    return _InMemory(info, train, evaluation, is_files=True)


def _tfds_builder(config):
    import tensorflow_datasets as tfds

    def split_size(split: str) -> int:
        if split in builder.info.splits:
            return builder.info.splits[split].num_examples
        size = int(builder.as_dataset(split=split).cardinality())  # no split metadata (tfds.testing.mock_data)
        if size < 0:
            raise ValueError(f"the size of split {split!r} is unknown")
        return size

    try:
        builder = tfds.builder(config.dataset, data_dir=config.get("data_dir"))
        train = config.get("train_split") or "train"
        evaluation = config.get("eval_split") or (
            "test" if builder.info.splits and "validation" not in builder.info.splits else "validation")
        num_train, num_eval = split_size(train), split_size(evaluation)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DatasetError(f"unknown dataset {config.dataset!r}: use 'digits', 'folder:/path/to/images' (one "
                           f"sub-folder per class) or a TFDS image-classification name; for detection and "
                           f"segmentation 'shapes', 'coco:/path/to/coco', 'voc:/path/to/VOCdevkit/VOC2012' or TFDS "
                           f"'coco/2017', 'voc/2007' (boxes only)") from error
    except (KeyError, ValueError, AssertionError) as error:
        raise DatasetError(f"TFDS dataset {config.dataset!r} is not prepared in {builder.data_dir}: nothing can "
                           f"be downloaded here; prepare it with `tfds build {config.dataset} --data_dir DIR` (or "
                           f"copy it there) and pass --config.data_dir=DIR ({error})") from error
    features = builder.info.features
    from . import dense_sources

    if dense_sources.is_tfds_detection(features):  # coco/2017, voc/2007, ...: boxes, labels 0-based
        if model_spec(config.model.name).task == "segmentation":
            raise DatasetError(f"TFDS {config.dataset!r} has boxes but no segmentation masks: train a segmentation "
                               f"model on 'coco:/path/to/coco' (COCO 2017 with its annotations folder, torchvision's "
                               f"COCO-with-VOC-labels masks) or 'voc:/path/to/VOCdevkit/VOC2012' (SegmentationClass)")
        labels = features["objects"]["label"]
        info = DatasetInfo(config.dataset, labels.num_classes + 1, num_train, num_eval, train, evaluation,
                           ("__background__", *labels.names), ("detection",))
        return builder, info
    if "image" not in features or "label" not in features:
        raise DatasetError(f"{config.dataset!r} is not an image-classification dataset (needs 'image' and 'label')")
    info = DatasetInfo(config.dataset, features["label"].num_classes, num_train, num_eval, train, evaluation,
                       tuple(features["label"].names))
    return builder, info


class DenseSource:
    """A detection / segmentation dataset indexed by example (`shapes` in memory, COCO / VOC folders): `reader`
    maps an example index to (image uint8 (H, W, 3), mask uint8 (H, W), boxes (M, 4), labels (M,)) in graph ops, M
    fixed per dataset."""

    info: DatasetInfo

    def reader(self, split: str) -> Callable[[tf.Tensor], tuple[tf.Tensor, ...]]:
        raise NotImplementedError

    def files(self, split: str) -> Optional[np.ndarray]:
        """The image files of a split, to name an unreadable one (None: nothing on disk)."""
        return None


@dataclasses.dataclass
class _DenseInMemory(DenseSource):
    """A dense-prediction dataset held in memory: per split, `image` (N, S, S, 3) uint8, `mask` (N, S, S) uint8
    class ids, `boxes` (N, M, 4) xyxy pixels with `labels` (N, M) (0 = padding row)."""

    info: DatasetInfo
    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]

    def reader(self, split: str) -> Callable[[tf.Tensor], tuple[tf.Tensor, ...]]:
        data = self.train if split == "train" else self.eval
        return lambda index: tuple(tf.gather(data[k], index) for k in ("image", "mask", "boxes", "labels"))


@functools.lru_cache(maxsize=2)
def _shapes() -> _DenseInMemory:
    """Generated once per process (about 3 s): the dataset is fixed, whatever the training seed."""
    keys = ("image", "mask", "boxes", "labels")
    train, evaluation = (shapes.load(split) for split in ("train", "validation"))
    info = DatasetInfo("shapes", shapes.NUM_CLASSES, len(train["image"]), len(evaluation["image"]), "train",
                       "validation", shapes.SHAPES_CLASSES, ("segmentation", "detection"))
    return _DenseInMemory(info, {k: train[k] for k in keys}, {k: evaluation[k] for k in keys})


def _source(config):
    name = config.dataset
    if name == "digits":
        return _digits(config)
    if name == "shapes":
        return _shapes()
    if name.startswith("folder:"):
        return _folder(name)
    if name.startswith(("coco:", "voc:")):
        from . import dense_sources

        return dense_sources.load(config, model_spec(config.model.name).task)
    return _tfds_builder(config)


def dataset_info(config) -> DatasetInfo:
    source = _source(config)
    return source[1] if isinstance(source, tuple) else source.info


# -------------------------------------------------------------------------------------------- processing
def _decode_file(path: tf.Tensor) -> tf.Tensor:
    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image  # decoders already give RGB


def eval_transform(config) -> WeightsInfo:
    """The eval preprocessing (resize, crop, interpolation, mean/std) of the model's reference weights, at the
    configured image size: what the model is trained on (mean/std) and evaluated with."""
    return weights_info(config.model.name).at_size(config.image_size)


def _normalize(image: tf.Tensor, transform: WeightsInfo) -> tf.Tensor:
    mean, std = np.asarray(transform.mean, np.float32), np.asarray(transform.std, np.float32)
    return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def _eval_image(image: tf.Tensor, transform: WeightsInfo, small: bool) -> tf.Tensor:
    """The weights' eval transform: shorter side to `resize_size` (antialiased), center crop `crop_size`."""
    size = transform.crop_size
    if small:  # tiny images (digits) are just resized
        return _normalize(tf.clip_by_value(tf.image.resize(image, (size, size), antialias=True), 0, 255), transform)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    resize = float(transform.resize_size)
    scaled = tf.cast(tf.floor(shape * resize / tf.reduce_min(shape)), tf.int32)  # torchvision truncates
    scaled = tf.maximum(scaled, int(resize))
    image = tf.image.resize(image, scaled, method=transform.interpolation, antialias=True)
    top = tf.cast(tf.round(tf.cast(scaled[0] - size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(scaled[1] - size, tf.float32) / 2), tf.int32)
    image = tf.clip_by_value(image[top:top + size, left:left + size], 0, 255)
    return _normalize(tf.round(image), transform)


def _train_transform(config) -> tf.types.experimental.PolymorphicFunction:
    """`_train_image` traced once: each epoch's Dataset.map would re-trace it, seconds for an AutoAugment graph."""
    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64))
    return tf.function(lambda image, seed: _train_image(image, seed, config), input_signature=signature)


def _train_image(image: tf.Tensor, seed: tf.Tensor, config) -> tf.Tensor:
    options = config.augment
    seeds = tf.random.experimental.stateless_split(seed, 4)
    size = config.image_size
    if options.get("random_resized_crop", True):
        image = augment.random_resized_crop(image, size, options.get("crop_scale_min", 0.08), seeds[0])
    else:
        image = tf.image.resize(image, (size, size), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    if options.get("flip", True):
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    policy = options.get("policy", "none")
    if policy != "none":
        image = augment.apply_policy(image, policy, seeds[2], num_ops=options.get("randaugment_num_ops", 2),
                                     magnitude=options.get("randaugment_magnitude", 9))
    image = _normalize(image, eval_transform(config))
    if options.get("random_erasing", 0.0):
        image = augment.random_erasing(image, options.random_erasing, seeds[3])
    return image


def _dense_transform(config, train: bool) -> tf.types.experimental.PolymorphicFunction:
    """A dense example (image, mask, boxes, labels, seed) -> the task's batch row, traced once."""
    task, size, normalization = model_spec(config.model.name).task, config.image_size, eval_transform(config)
    recipe = config.augment.get("detection_recipe", "ssdlite")
    scale = tuple(config.augment.get("scale_range", (0.5, 2.0)))
    base_size = config.augment.get("base_size", 0) or size  # torchvision: 520, random-resized around it, crop 480
    if recipe not in ("ssdlite", "ssd"):
        raise DatasetError(f"config.augment.detection_recipe={recipe!r}: use 'ssdlite' or 'ssd' (torchvision's "
                           f"detection references)")

    def transform(image, mask, boxes, labels, seed):
        if task == "segmentation":
            out = (dense_augment.segmentation_train(image, mask, seed, base_size=base_size, crop_size=size,
                                                    scale=scale)
                   if train else dense_augment.segmentation_eval(image, mask, size))
            return {"image": _normalize(out["image"], normalization), "label": tf.cast(out["mask"], tf.int32)}
        if train:
            out = (dense_augment.ssdlite_train if recipe == "ssdlite" else dense_augment.ssd_train)(
                image, boxes, labels, seed, size=size)
        else:
            out = dense_augment.detection_eval(image, boxes, labels, size=size)
        return {"image": _normalize(out["image"], normalization), "boxes": out["boxes"],
                "labels": tf.cast(out["labels"], tf.int32), "box_mask": out["box_mask"]}

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, None], tf.uint8),
                 tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int64))
    return tf.function(transform, input_signature=signature)


# ----------------------------------------------------------------------------------------------- batches
def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise DatasetError(f"batch size {global_batch_size} is not divisible by the {process_count} processes")
    return global_batch_size // process_count


def _epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}".encode()).digest()[:4], "little")


def _finish(ds: tf.data.Dataset, local_batch: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = 0
    ds = ds.batch(local_batch, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _to_numpy(ds: tf.data.Dataset, files: Optional[np.ndarray] = None) -> Iterator[dict[str, np.ndarray]]:
    try:
        yield from ds.as_numpy_iterator()
    except Exception as error:  # not `except tf.errors...`: at interpreter exit, closing needs no module globals
        if not isinstance(error, tf.errors.InvalidArgumentError):
            raise
        raise DatasetError(f"cannot decode an image{_name_unreadable(files)}: "
                           f"{error.message.splitlines()[0]}") from None


def _name_unreadable(files: Optional[np.ndarray]) -> str:
    """TF's decode error does not say which file; find it (only after a failure, so no up-front scan)."""
    from PIL import Image

    bad = []
    for path in files if files is not None else ():
        try:
            with Image.open(path) as image:
                image.convert("RGB")
        except Exception:  # noqa: BLE001 - any failure to read means this is the file to name
            bad.append(str(path))
    return f" ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})" if bad else ""


def _epoch_rows(config, size: int, epoch: int, skip: int, local_batch: int, process_index: int,
                process_count: int, steps: int) -> tf.data.Dataset:
    """(example index, position in the epoch) of this process's rows of epoch `epoch` of an in-memory dataset,
    after `skip` global batches; the order ignores process_count."""
    order = np.random.default_rng(_epoch_seed(config.seed, epoch)).permutation(size)
    global_batch = local_batch * process_count
    positions = np.arange(steps * global_batch).reshape(steps, process_count, local_batch)
    positions = positions[skip:, process_index].reshape(-1)
    return tf.data.Dataset.from_tensor_slices((order[positions], positions))


def _example_seed(config, epoch: int, position: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.cast(config.seed, tf.int64), tf.cast(epoch, tf.int64) * 2**32 + position])


def _dense_epoch(source: DenseSource, config, transform, epoch: int, *rows) -> tf.data.Dataset:
    """Epoch `epoch` of a dense dataset indexed by example (`shapes`, COCO / VOC folders)."""
    read = source.reader("train")

    def load(index, position):
        return transform(*read(index), _example_seed(config, epoch, position))

    return _epoch_rows(config, source.info.num_train, epoch, *rows).map(load, num_parallel_calls=tf.data.AUTOTUNE)


def _memory_epoch(source: _InMemory, config, transform, epoch: int, skip: int, local_batch: int,
                  process_index: int, process_count: int, steps: int) -> tf.data.Dataset:
    """Epoch `epoch` of an in-memory classification dataset."""
    images, labels = source.train
    ds = _epoch_rows(config, len(labels), epoch, skip, local_batch, process_index, process_count, steps)

    def load(index, position):
        image = _decode_file(tf.gather(images, index)) if source.is_files else tf.gather(images, index)
        return {"image": transform(_to_rgb(image), _example_seed(config, epoch, position)),
                "label": tf.gather(labels, index)}

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def train_batches(config, *, global_batch_size: int, process_index: int, process_count: int,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches of this process's rows; batch `start_step` comes first (exact resume)."""
    local_batch = _local_batch_size(global_batch_size, process_count)
    source = _source(config)
    info = source[1] if isinstance(source, tuple) else source.info
    steps = info.num_train // global_batch_size
    if steps == 0:
        raise DatasetError(f"batch size {global_batch_size} exceeds the {info.num_train} training examples")
    epoch, skip = divmod(start_step, steps)
    dense = "classification" not in info.tasks
    transform = _dense_transform(config, train=True) if dense else _train_transform(config)
    while True:
        if isinstance(source, DenseSource):
            ds = _dense_epoch(source, config, transform, epoch, skip, local_batch, process_index, process_count,
                              steps)
        elif isinstance(source, _InMemory):
            ds = _memory_epoch(source, config, transform, epoch, skip, local_batch, process_index, process_count,
                               steps)
        else:
            ds = _tfds_train_epoch(source[0], info, config, _tfds_row(info, config, transform), epoch, skip,
                                   local_batch, process_index, process_count, steps)
        yield from _to_numpy(_finish(ds, local_batch), _files(source, "train"))
        epoch, skip = epoch + 1, 0


def _files(source, split: str) -> Optional[np.ndarray]:
    if isinstance(source, DenseSource):
        return source.files(split)
    if isinstance(source, _InMemory) and source.is_files:
        return (source.train if split == "train" else source.eval)[0]
    return None


def _tfds_row(info: DatasetInfo, config, transform) -> Callable[[dict, tf.Tensor, tf.Tensor], dict]:
    """(TFDS example, its decoded image, seed) -> batch row: `transform(image, seed)` and the label, or for a
    detection dataset the dense transform of the image and its `objects` as padded pixel boxes."""
    if "detection" not in info.tasks:
        return lambda example, image, seed: {"image": transform(image, seed),
                                             "label": tf.cast(example["label"], tf.int32)}
    from . import dense_sources

    max_boxes = config.get("max_boxes", 100)

    def row(example, image, seed):
        shape = tf.shape(image)
        boxes, labels = dense_sources.tfds_boxes(example["objects"], shape[0], shape[1], max_boxes)
        return transform(image, tf.zeros([0, 0], tf.uint8), boxes, labels, seed)

    return row


def _tfds_train_epoch(builder, info: DatasetInfo, config, row, epoch: int, skip: int, local_batch: int,
                      process_index: int, process_count: int, steps: int) -> tf.data.Dataset:
    """Per-process file shards (scalable on pods; the order therefore depends on process_count)."""
    import tensorflow_datasets as tfds

    epoch_seed = _epoch_seed(config.seed, epoch)
    split = tfds.even_splits(info.train_split, n=process_count, drop_remainder=True)[process_index]
    read_config = tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16)
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.shuffle(min(config.get("shuffle_buffer_size", 16_384), info.num_train), seed=epoch_seed,
                    reshuffle_each_iteration=False)
    ds = ds.take(steps * local_batch).enumerate().skip(skip * local_batch)

    def load(position, example):
        image = tf.io.decode_image(example["image"], channels=3, expand_animations=False)
        seed = tf.stack([tf.cast(config.seed, tf.int64),
                         (tf.cast(epoch, tf.int64) * 2**16 + process_index) * 2**32 + position])
        return row(example, image, seed)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


def eval_batches(config, *, global_batch_size: int, process_index: int, process_count: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Every eval example exactly once over all processes; padding rows have mask 0. Equal batch counts."""
    local_batch = _local_batch_size(global_batch_size, process_count)
    source = _source(config)
    size, transform = config.image_size, eval_transform(config)
    if not isinstance(source, tuple):  # indexed: each process takes its rows of equally many global batches
        total = source.info.num_eval
        num_batches = math.ceil(total / global_batch_size)
        positions = np.arange(num_batches * global_batch_size).reshape(num_batches, process_count, local_batch)
        positions = positions[:, process_index].reshape(-1)
        mask = (positions < total).astype(np.float32)
        ds = tf.data.Dataset.from_tensor_slices((np.minimum(positions, total - 1), mask))
    if isinstance(source, DenseSource):
        dense_transform, read = _dense_transform(config, train=False), source.reader("eval")
        no_seed = tf.zeros([2], tf.int64)

        def load(index, weight):
            return {**dense_transform(*read(index), no_seed), "mask": weight}
    elif isinstance(source, _InMemory):
        images, labels = source.eval

        def load(index, weight):
            image = _decode_file(tf.gather(images, index)) if source.is_files else tf.gather(images, index)
            return {"image": _eval_image(_to_rgb(image), transform, small=not source.is_files),
                    "label": tf.gather(labels, index), "mask": weight}
    else:
        builder, info = source
        detection = "detection" in info.tasks
        image_transform = (_dense_transform(config, train=False) if detection else
                           lambda image, seed: _eval_image(image, transform, small=False))
        row, no_seed = _tfds_row(info, config, image_transform), tf.zeros([2], tf.int64)
        ds = _tfds_eval_examples(builder, info, local_batch, process_index, process_count,
                                 "objects" if detection else "label")

        def load(example, weight):
            image = tf.cond(weight > 0, lambda: tf.io.decode_image(example["image"], channels=3,
                                                                   expand_animations=False),
                            lambda: tf.zeros((size, size, 3), tf.uint8))
            return {**row(example, image, no_seed), "mask": weight}
    yield from _to_numpy(_finish(ds.map(load, num_parallel_calls=tf.data.AUTOTUNE), local_batch),
                         _files(source, "eval"))


_TFDS_OBJECT_FIELDS = ("bbox", "label", "is_crowd", "is_difficult")  # what `dense_sources.tfds_boxes` reads


def _tfds_eval_examples(builder, info: DatasetInfo, local_batch: int, process_index: int, process_count: int,
                        target: str) -> tf.data.Dataset:
    """(example with the still-encoded `image` and its `target` feature, weight 1) of this process's share of the
    eval split, then (an all-zero example, weight 0) up to the batch count every process runs."""
    import tensorflow_datasets as tfds

    split = tfds.even_splits(info.eval_split, n=process_count, drop_remainder=False)[process_index]
    per_process = math.ceil(info.num_eval / process_count)
    num_batches = math.ceil(per_process / local_batch)
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})

    def select(example):
        value = example[target]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in _TFDS_OBJECT_FIELDS}
        return {"image": example["image"], target: value}, 1.0

    ds = ds.map(select)
    blank = tf.nest.map_structure(lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype),
                                  ds.element_spec[0])
    pad = tf.data.Dataset.from_tensors((blank, 0.0)).repeat()
    return ds.concatenate(pad).take(num_batches * local_batch)
