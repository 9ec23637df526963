"""A run's config resolved once: the model (looked up in the registry here only), its task, the dataset source, the
preprocessing the pipeline applies and the serving transform written beside the checkpoints."""
from __future__ import annotations

import dataclasses
import difflib
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ..registry import create_model, list_models, model_spec, weights_info
from ..weights import WeightsInfo
from . import tasks
from .input_pipeline import Pipeline
from .sources import DatasetInfo, Source, datasets_for, open_source
from .transforms import Preprocessing

MODULE_OPTIONS = ("name", "num_classes")  # config.model keys that are not the model's own options


class ConfigError(ValueError):
    """A config value that cannot work, named with the fix."""


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {k: v for k, v in config.model.items() if k not in MODULE_OPTIONS}


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict

    def __post_init__(self) -> None:
        name = self.config.model.name
        if name not in list_models():
            close = difflib.get_close_matches(name, list_models(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown model {name!r}; {hint}known: {', '.join(list_models())} (python predict.py "
                              f"--list-models)")
        self.task_name: str = model_spec(name).task  # before the options: a model of the wrong task is the news
        self.source: Source = open_source(self.config, self.task_name)
        if self.task_name not in self.info.tasks:
            raise ConfigError(f"{name} is a {self.task_name} model, but dataset {self.info.name!r} is for "
                              f"{' and '.join(self.info.tasks)}: {datasets_for(self.task_name)}")
        try:
            model_spec(name, **model_options(self.config))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"config.model: {error}") from None

    @property
    def info(self) -> DatasetInfo:
        return self.source.info

    @cached_property
    def reference_model(self) -> Any:
        """The configured model with its reference class count: what its head and input sides are."""
        return create_model(self.config.model.name, **model_options(self.config))

    @property
    def detection_head(self) -> Any:
        return self.reference_model.detection_head

    @property
    def num_classes(self) -> int:
        """The model's class count: the dataset's, less its background class for heads without one (YOLO)."""
        if self.task_name == "detection" and not self.detection_head.background_class:
            return self.info.num_classes - 1
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's class names by output index."""
        names = self.info.class_names
        return names[1:] if len(names) == self.num_classes + 1 else names

    @cached_property
    def eval_transform(self) -> WeightsInfo:
        """How the run is evaluated and then served: the reference weights' transform at the run's image size
        (small images, as digits': a plain square resize), with the run's own labels."""
        config, info = self.config, weights_info(self.config.model.name).at_size(self.config.image_size)
        changes: dict[str, Any] = {"labels": self.info.name, "reference": f"trained on {self.info.name}"}
        if self.config.dataset == "digits":  # 8x8 images: resize to the square, no crop
            changes.update(resize_mode="fixed", center_crop=False, resize_size=config.image_size)
        return dataclasses.replace(info, **changes)

    @cached_property
    def pipeline(self) -> Pipeline:
        recipe = self.config.augment.detection_recipe
        if recipe == "auto":
            recipe = self.detection_head.train_recipe if self.task_name == "detection" else ""
        rect_stride = 0
        if self.config.eval_rect and self.eval_transform.resize_mode == "letterbox":
            rect_stride = self.reference_model.input_multiple
        return Pipeline(self.source, Preprocessing(self.task_name, self.eval_transform, recipe, rect_stride),
                        self.config)

    def build_model(self) -> Any:
        dtype = jnp.bfloat16 if self.config.half_precision else jnp.float32
        return create_model(self.config.model.name, num_classes=self.num_classes, dtype=dtype,
                            **model_options(self.config))

    def task(self, model: Any) -> tasks.Task:
        return tasks.create_task(self.task_name, model, self.num_classes, self.config.image_size,
                                 self.config.label_smoothing)

    def validate(self) -> None:
        """Everything checkable before any work, each named with the fix."""
        config, info = self.config, self.info
        if self.task_name == "detection":
            try:  # a head whose loss is not built yet says so here
                self.reference_model.loss_fn((64, 64))
            except (TypeError, ValueError, NotImplementedError) as error:
                raise ConfigError(f"config.model: {error}") from None
        num_classes = config.model.num_classes
        if num_classes not in (None, -1, self.num_classes):
            raise ConfigError(f"dataset {info.name!r} has {self.num_classes} classes but config.model.num_classes="
                              f"{num_classes}; set it to {self.num_classes} (or -1 to take it from the dataset)")
        devices, processes = jax.device_count(), jax.process_count()
        for key in ("batch_size", "eval_batch_size"):
            value = config[key] or config.batch_size
            if value <= 0 or value % devices:
                raise ConfigError(f"config.{key}={value} must be a positive multiple of the {devices} devices "
                                  f"({processes} process(es)); e.g. {max(devices, value // devices * devices)}")
        if not config.eval_only and info.num_train < config.batch_size:
            raise ConfigError(f"config.batch_size={config.batch_size} exceeds the {info.num_train} training "
                              f"examples of {info.name!r}")
        for key in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
            if config[key] <= 0:
                raise ConfigError(f"config.{key} must be positive, got {config[key]}")
        input_multiple = self.reference_model.input_multiple
        if config.image_size % input_multiple:
            fixed = max(input_multiple, round(config.image_size / input_multiple) * input_multiple)
            raise ConfigError(f"config.image_size={config.image_size}: {config.model.name} takes sides that are "
                              f"multiples of {input_multiple}; e.g. --config.image_size={fixed}")

    def metadata(self) -> dict[str, Any]:
        """model.json: what predict.py / export.py / init_from need to serve the run as it was evaluated."""
        options = {k: v for k, v in model_options(self.config).items() if k != "dropout"}
        return {"model": self.config.model.name, "num_classes": self.num_classes, "overrides": options,
                "dataset": self.info.name, "image_size": self.config.image_size,
                "preprocessing": self.eval_transform.to_json(), "class_names": list(self.class_names)}
