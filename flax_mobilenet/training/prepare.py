"""`prepare.py`: a run's dataset (folder, COCO, VOC, YOLO) written once into ArrayRecord shards (`shards.py`), its
training images reduced to the side the recipe reads, for runs that repeat many epochs: each epoch then decodes
smaller JPEGs from a few large files instead of every original image from its own file.

What a prepared run sees: the same examples at the same indices, so the same epoch orders and augmentation draws.
A training image whose bounded side (`SIDE_RULES`) exceeds `side` is resized to it (Pillow's antialiased bilinear,
`resample.py`) and re-encoded as JPEG at `quality`, its boxes scaled and its mask resized nearest; a smaller one
keeps its original bytes.  The eval split keeps its original bytes: a prepared run is evaluated on the images
`predict.py` will serve.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from . import resample
from .shards import FORMAT_VERSION, METADATA_FILE, WRITER_OPTIONS, encode_record, shard_name, sizes_name
from .sources import SPLITS, DatasetError, Example, Source, hold, iterate_numpy

# task -> (which side of a training image `side` bounds, its default from (config, the run's serving transform)):
# classification the serving resize (256 for a 224 crop), segmentation the recipe's base size (torchvision's 520),
# detection twice the input (SSD's IoU crops zoom in up to 3x; YOLO's load_image reduces to 1x itself)
SIDE_RULES: dict[str, tuple[str, Callable[[Any, Any], int]]] = {
    "classification": ("shorter", lambda config, transform: transform.resize_size),
    "segmentation": ("shorter", lambda config, transform: config.augment.base_size or transform.crop_size),
    "detection": ("longer", lambda config, transform: 2 * transform.crop_size),
}
RECORDS_PER_SHARD = 4096  # about 100 MB of ImageNet-sized JPEGs per file
DEFAULT_QUALITY = 90


def default_side(task: str, config, transform) -> int:
    return SIDE_RULES[task][1](config, transform)


def prepare(source: Source, task: str, out: Path, side: int, quality: int = DEFAULT_QUALITY,
            progress: bool = True) -> dict[str, Any]:
    """Write `source` into `out` (created; must not hold a prepared dataset yet); the metadata written last."""
    if source.files("train") is None:
        raise DatasetError(f"dataset {source.info.name!r} is not a dataset of image files: prepare reads 'folder:', "
                           f"'coco:', 'voc:' and 'yolo:' datasets ('digits' and 'shapes' are in memory already, TFDS "
                           f"datasets are sharded already)")
    if side < 1:
        raise DatasetError(f"side {side}: the bound on the training images' side is a positive pixel count "
                           f"(prepare.py --side; 0 there: the task's default)")
    if not 1 <= quality <= 100:
        raise DatasetError(f"JPEG quality {quality}: use 1-100 (prepare.py --quality)")
    if (out / METADATA_FILE).exists():
        raise DatasetError(f"{out} holds a prepared dataset already: pass another --out, or delete it first")
    rule = SIDE_RULES[task][0]
    info = source.info
    try:
        out.mkdir(parents=True, exist_ok=True)
        splits = {split: _write_split(source, split, task, out, side if split == "train" else 0, rule, quality,
                                      progress) for split in SPLITS}
        metadata = {"format": FORMAT_VERSION, "source": info.name, "task": task, "num_classes": info.num_classes,
                    "class_names": list(info.class_names), "train_split": info.train_split,
                    "eval_split": info.eval_split, "train_side": {"side": side, "bounds": rule, "quality": quality},
                    "splits": splits}
        partial = out / f"{METADATA_FILE}.partial"
        partial.write_text(json.dumps(metadata, indent=1))
        partial.replace(out / METADATA_FILE)  # atomic: the dataset exists once every shard is written
    except (OSError, RuntimeError) as error:  # the folder, a full disk (ArrayRecord's writer: RuntimeError)
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DatasetError(f"cannot write the prepared dataset into {out} ({cause}): free some space or pick another "
                           f"--out, then run prepare.py again (what it wrote so far does not pass for a dataset)"
                           ) from None
    return metadata


def _write_split(source: Source, split: str, task: str, out: Path, side: int, rule: str, quality: int,
                 progress: bool) -> dict[str, Any]:
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    count, files = source.size(split), source.files(split)
    read, paths = source.reader(split), hold(files)

    def load(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return _stored(read(index), tf.io.read_file(tf.gather(paths, index)), side, rule, quality)

    rows = tf.data.Dataset.range(count).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    num_shards = max(1, math.ceil(count / RECORDS_PER_SHARD))
    names = [shard_name(split, shard, num_shards) for shard in range(num_shards)]
    sizes, most_boxes, writer = np.zeros((count, 2), np.int32), 0, None
    bar = tqdm(total=count, desc=split, unit="img", disable=not progress)
    for index, row in enumerate(iterate_numpy(rows.prefetch(tf.data.AUTOTUNE), files)):
        if index % RECORDS_PER_SHARD == 0:
            if writer is not None:
                writer.close()
            writer = ArrayRecordWriter(str(out / names[index // RECORDS_PER_SHARD]), WRITER_OPTIONS)
        writer.write(encode_record(row, task))
        sizes[index] = row["size"]
        most_boxes = max(most_boxes, len(row.get("labels", ())))
        bar.update()
    bar.close()
    if writer is not None:
        writer.close()
    np.save(out / sizes_name(split), sizes)
    return {"count": count, "shards": names, "max_boxes": most_boxes}


def _stored(example: Example, original: tf.Tensor, side: int, rule: str, quality: int) -> dict[str, tf.Tensor]:
    """What one record holds: the image's bytes (its original ones, or the reduced image as JPEG), its stored size,
    and the example's annotations scaled with it (boxes: only the real rows)."""
    image = example["image"]
    shape = tf.shape(image)[:2]
    bound = tf.reduce_min(shape) if rule == "shorter" else tf.reduce_max(shape)
    row = {k: v for k, v in example.items() if k not in ("image", "mask", "boxes", "labels")}
    dense = "boxes" in example
    # no mask: a (0, 0) constant (detection datasets), left out of the graph (TF's PNG encoder aborts on it)
    mask = example["mask"] if dense and example["mask"].shape.as_list() != [0, 0] else None
    real = example["labels"] > 0 if dense else None
    boxes = tf.boolean_mask(example["boxes"], real) if dense else tf.zeros([0, 4])

    def keep():
        return original, shape, boxes, *([] if mask is None else [mask])

    def reduce():
        size = tf.cast(tf.round(tf.cast(shape, tf.float64) * side / tf.cast(bound, tf.float64)), tf.int32)
        size = tf.maximum(size, 1)
        resized = tf.numpy_function(lambda pixels, hw: resample.resize_bilinear(pixels, int(hw[0]), int(hw[1])),
                                    [image, size], tf.uint8, stateful=False)
        encoded = tf.io.encode_jpeg(tf.ensure_shape(resized, [None, None, 3]), quality=quality)
        scale = tf.cast(size, tf.float32) / tf.cast(shape, tf.float32)
        scaled = (encoded, size, boxes * tf.stack([scale[1], scale[0], scale[1], scale[0]]))
        if mask is None:
            return scaled
        return *scaled, tf.cast(tf.image.resize(mask[..., None], size, method="nearest")[..., 0], tf.uint8)

    stored = tf.cond(bound > side, reduce, keep) if side else keep()
    row.update(image=stored[0], size=stored[1])
    if dense:
        png = tf.constant(b"") if mask is None else tf.io.encode_png(stored[3][..., None])
        row.update(mask=png, boxes=stored[2], labels=tf.boolean_mask(example["labels"], real))
    return row


def describe(metadata: dict[str, Any], out: Path) -> str:
    """A one-paragraph summary of what `prepare` wrote."""
    megabytes = sum(path.stat().st_size for path in out.glob("*.array_record")) / 1e6
    splits, train = metadata["splits"], metadata["train_side"]
    return (f"wrote {splits['train']['count']} train and {splits['eval']['count']} eval images of "
            f"{metadata['source']!r} ({metadata['task']}) into {out} ({megabytes:.0f} MB); training images' "
            f"{train['bounds']} side at most {train['side']} px (JPEG quality {train['quality']}), eval images as "
            f"they are")

