"""Model names (torchvision's, and timm's for timm-trained weights) -> architecture, defaults, weights.

Each family file in `backbones/` registers its names with `register`; nothing here knows a family.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional

from .backbones.builder import MobileNet
from .backbones.spec import FeatureInfo, ModelSpec, feature_info as _feature_info
from .weights import WeightsInfo

MODULE_OPTIONS = ("num_classes", "dropout", "feature_taps", "depthwise_impl", "fold_bn", "dtype")
SOURCES = ("torchvision", "timm", "ultralytics")  # ultralytics: its `model.N.*` layout, which the yolov5 package shares


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    resolve: Callable[..., ModelSpec]  # (source=..., **architecture options) -> ModelSpec
    defaults: dict[str, Any]  # architecture options and module options with the reference's defaults
    source: str  # 'torchvision' | 'timm': whose checkpoints (key layout, hyper-parameters) the name reproduces
    weights: WeightsInfo  # the eval transform and labels of the reference weights
    fixed: tuple[str, ...] = ()  # options this name pins (timm's names encode the width)
    variants: tuple[dict[str, Any], ...] = ({},)  # overrides tried when guessing what a checkpoint is


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, resolve: Callable[..., ModelSpec], defaults: dict[str, Any], source: str,
             weights: WeightsInfo, fixed: tuple[str, ...] = (), variants: tuple[dict[str, Any], ...] = ({},)) -> None:
    """Make `name` known to create_model, convert_state_dict and the CLIs (family files call this)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    if source not in SOURCES:
        raise ValueError(f"{name}: source must be one of {SOURCES}, got {source!r}")
    _REGISTRY[name] = ModelEntry(resolve, dict(defaults), source, weights, tuple(fixed), tuple(variants))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def _split_options(name: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    entry = model_entry(name)
    allowed = set(entry.defaults) | set(MODULE_OPTIONS)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"{name} does not take {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}")
    for option in entry.fixed:
        if option in overrides and overrides[option] != entry.defaults[option]:
            others = [n for n in list_models() if option in _REGISTRY[n].defaults and option not in _REGISTRY[n].fixed
                      and _REGISTRY[n].resolve == entry.resolve]
            hint = f"use {others[0]} to change {option}" if others else f"the widths timm publishes are separate names (list_models())"
            raise ValueError(f"{name} is timm's fixed {option}={entry.defaults[option]} model (its name encodes it); "
                             f"{hint}")
    options = {**entry.defaults, **overrides}
    module_options = {k: options.pop(k) for k in MODULE_OPTIONS if k in options}
    return options, module_options


def model_spec(name: str, **overrides: Any) -> ModelSpec:
    """The resolved architecture (every layer's channels) of `create_model(name, **overrides)`."""
    architecture, _ = _split_options(name, overrides)
    entry = model_entry(name)
    return entry.resolve(source=entry.source, **architecture)


class _ReferenceClasses:
    """create_model's default num_classes: the reference's class count."""

    def __repr__(self) -> str:
        return "REFERENCE_CLASSES"


REFERENCE_CLASSES: Any = _ReferenceClasses()


def create_model(name: str, num_classes: Optional[int] = REFERENCE_CLASSES, **overrides: Any) -> MobileNet:
    """Build a registered model; overrides use torchvision's argument names (`width_mult`, ...).

    `num_classes` defaults to the reference's: 1000 (ImageNet classifiers), or the `num_classes` of the
    name's defaults (21 for torchvision's VOC-label segmentation models).
    """
    if num_classes is not REFERENCE_CLASSES:
        overrides["num_classes"] = num_classes
    architecture, module_options = _split_options(name, overrides)
    if module_options.get("feature_taps") is not None:
        module_options["feature_taps"] = tuple(module_options["feature_taps"])
    entry = model_entry(name)
    return MobileNet(entry.resolve(source=entry.source, **architecture), **module_options)


def feature_info(name: str, **overrides: Any) -> dict[str, FeatureInfo]:
    """Tappable feature maps (name, layer, stride, channels) of a model, without running it."""
    return _feature_info(model_spec(name, **overrides))


def weights_info(name: str) -> WeightsInfo:
    """The eval preprocessing (resize, crop, interpolation, mean/std) and labels of `name`'s reference weights."""
    return model_entry(name).weights
