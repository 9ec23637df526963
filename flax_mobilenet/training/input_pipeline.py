"""Input pipeline: a run's `Source` (built once) through the task's transforms (`transforms.py`) as deterministic,
resumable batches.

Determinism is what makes resume exact: epoch e is shuffled with a seed derived from (seed, e), and every random
augmentation of an example is drawn from stateless ops seeded by (seed, epoch, position in epoch), so batch k is
the same whether the iterator started at 0 or at k.  TensorFlow is used only here and in the sources, for tf.data.

The host does only what must happen there (read, decode - a JPEG only inside its crop window -, crop, resize, the
box-aware detection ops) and hands uint8 rows; `device_transform` is the rest (flip, AutoAugment / RandAugment,
random erasing, normalisation), which the trainer runs inside its jitted steps, keyed by each row's `seed`.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from . import transforms
from .device_augment import DeviceTransform
from .sources import DatasetError, DatasetInfo, EpochRows, Source, iterate_numpy  # DatasetError: train.py's
from .transforms import Preprocessing


# Epochs shorter than this many steps are read several to a tf.data pipeline: each new pipeline starts with empty
# prefetch buffers (measured: 512-image epochs ran at half the throughput of 2048-image ones, batch 64).  At most
# MAX_CHAINED_EPOCHS are chained: a TFDS source builds a reader per epoch, and hundreds of one-step epochs (a
# small dataset, a large batch) took minutes to build.
MIN_PIPELINE_STEPS = 256
MAX_CHAINED_EPOCHS = 16


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise DatasetError(f"batch size {global_batch_size} is not divisible by the {process_count} processes")
    return global_batch_size // process_count


def _batched(ds: tf.data.Dataset, local_batch: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = 0
    ds = ds.batch(local_batch, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class Pipeline:
    """Train and eval batches of one source for one model's preprocessing."""

    def __init__(self, source: Source, preprocessing: Preprocessing, config):
        self.source, self.preprocessing, self.seed = source, preprocessing, config.seed
        self._augment = config.augment
        # traced once: each epoch's Dataset.map would re-trace a plain function (seconds for an AutoAugment graph)
        self._train = tf.function(transforms.train_transform(source, config, preprocessing), reduce_retracing=True)
        self._eval = tf.function(transforms.eval_transform(preprocessing), reduce_retracing=True)

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    def device_transform(self, train: bool) -> DeviceTransform:
        """What the jitted step does to a batch first: for classification training the per-example augmentations,
        then (every task, train and eval) the normalisation with the serving transform's mean/std."""
        transform = self.preprocessing.eval_transform
        if not (train and self.preprocessing.task == "classification"):
            return DeviceTransform(tuple(transform.mean), tuple(transform.std))
        options = self._augment
        return DeviceTransform(tuple(transform.mean), tuple(transform.std), flip=options.flip, policy=options.policy,
                               randaugment_num_ops=options.randaugment_num_ops,
                               randaugment_magnitude=options.randaugment_magnitude,
                               random_erasing=options.random_erasing)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        return self.info.num_train // global_batch_size

    def train_batches(self, *, global_batch_size: int, process_index: int, process_count: int,
                      start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Endless training batches of this process's rows; batch `start_step` comes first (exact resume)."""
        local_batch = local_batch_size(global_batch_size, process_count)
        steps = self.steps_per_epoch(global_batch_size)
        if steps == 0:
            raise DatasetError(f"batch size {global_batch_size} exceeds the {self.info.num_train} training examples")
        epoch, skip = divmod(start_step, steps)
        epochs = min(-(-MIN_PIPELINE_STEPS // steps), MAX_CHAINED_EPOCHS)
        while True:
            rows = EpochRows(epoch, skip, steps, local_batch, process_index, process_count, epochs)
            examples = self.source.train_examples(rows, self.seed,
                                                  encoded=self.preprocessing.task == "classification")
            ds = examples.map(self._train, num_parallel_calls=tf.data.AUTOTUNE)
            yield from iterate_numpy(_batched(ds, local_batch), self.source.files("train"))
            epoch, skip = epoch + epochs, 0

    def eval_batches(self, *, global_batch_size: int, process_index: int, process_count: int
                     ) -> Iterator[dict[str, np.ndarray]]:
        """Every eval example exactly once over all processes; padding rows have mask 0. Equal batch counts."""
        local_batch = local_batch_size(global_batch_size, process_count)
        ds = self.source.eval_examples(local_batch, process_index, process_count,
                                       *self._rect_batches(global_batch_size))
        ds = ds.map(lambda example, weight: {**self._eval(example), "mask": weight},
                    num_parallel_calls=tf.data.AUTOTUNE)
        yield from iterate_numpy(_batched(ds, local_batch), self.source.files("eval"))

    def _rect_batches(self, global_batch_size: int) -> tuple[Optional[np.ndarray], dict[str, np.ndarray]]:
        """ultralytics' rectangular eval batches (its val: images sorted by aspect ratio, each global batch
        letterboxed to its own shape, pad 0.5): (the example at each position, its 'letterbox_shape'); or
        (None, {}) for square eval (other preprocessing, or image sizes the source does not know)."""
        stride = self.preprocessing.rect_stride
        sizes = self.source.image_sizes("eval") if stride else None
        if sizes is None:
            return None, {}
        from .yolo_augment import rect_batch_shapes

        rect = rect_batch_shapes(sizes, global_batch_size, self.preprocessing.image_size, stride, pad=0.5)
        return rect.order, {"letterbox_shape": rect.shapes.astype(np.int32)}
