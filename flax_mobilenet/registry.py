"""Model names (torchvision's, and timm's for timm-trained weights) -> architecture + defaults."""
from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable

from . import architectures as arch
from .architectures import FeatureInfo, ModelSpec
from .models import MobileNet

MODULE_OPTIONS = ("num_classes", "dropout", "feature_taps", "depthwise_impl", "fold_bn", "dtype")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    resolve: Callable[..., ModelSpec]  # keyword architecture options -> ModelSpec
    defaults: dict[str, Any]  # architecture options and module options with the reference's defaults
    source: str  # 'torchvision' | 'timm': whose checkpoints the defaults reproduce
    fixed: tuple[str, ...] = ()  # options this name pins (timm's names encode the width)


TORCHVISION_V3_BN = dict(bn_eps=1e-3, bn_momentum=0.01)
TIMM_BN = dict(bn_eps=1e-5, bn_momentum=0.1)

_resolve_v3_large = functools.partial(arch.resolve_v3, arch.MOBILENET_V3_LARGE, 1280)
_resolve_v3_small = functools.partial(arch.resolve_v3, arch.MOBILENET_V3_SMALL, 1024)

_REGISTRY: dict[str, ModelEntry] = {
    "mobilenet_v1": ModelEntry(arch.resolve_v1, dict(width_mult=1.0, dropout=0.0, **TIMM_BN), "timm"),
    "mobilenet_v2": ModelEntry(arch.resolve_v2, dict(width_mult=1.0, dropout=0.2, **TIMM_BN), "torchvision"),
    "mobilenet_v3_large": ModelEntry(_resolve_v3_large, dict(width_mult=1.0, reduced_tail=False, dilated=False,
                                                             dropout=0.2, **TORCHVISION_V3_BN), "torchvision"),
    "mobilenet_v3_small": ModelEntry(_resolve_v3_small, dict(width_mult=1.0, reduced_tail=False, dilated=False,
                                                             dropout=0.2, **TORCHVISION_V3_BN), "torchvision"),
    "mobilenetv1_100": ModelEntry(arch.resolve_v1, dict(width_mult=1.0, dropout=0.0, **TIMM_BN), "timm",
                                  ("width_mult",)),
    "mobilenetv2_100": ModelEntry(arch.resolve_v2, dict(width_mult=1.0, dropout=0.0, **TIMM_BN), "timm",
                                  ("width_mult",)),
    "mobilenetv3_large_100": ModelEntry(_resolve_v3_large, dict(width_mult=1.0, dropout=0.0, **TIMM_BN), "timm",
                                        ("width_mult",)),
    "mobilenetv3_small_100": ModelEntry(_resolve_v3_small, dict(width_mult=1.0, dropout=0.0, **TIMM_BN), "timm",
                                        ("width_mult",)),
}


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
            raise ValueError(f"{name} is timm's fixed {option}={entry.defaults[option]} model; use the "
                             f"torchvision-named model to change {option}")
    options = {**entry.defaults, **overrides}
    module_options = {k: options.pop(k) for k in MODULE_OPTIONS if k in options}
    return options, module_options


def model_spec(name: str, **overrides: Any) -> ModelSpec:
    """The resolved architecture (every layer's channels) of `create_model(name, **overrides)`."""
    architecture, _ = _split_options(name, overrides)
    return model_entry(name).resolve(**architecture)


def create_model(name: str, num_classes: int | None = 1000, **overrides: Any) -> MobileNet:
    """Build a registered model; overrides use torchvision's argument names (`width_mult`, ...)."""
    architecture, module_options = _split_options(name, dict(overrides, num_classes=num_classes))
    if module_options.get("feature_taps") is not None:
        module_options["feature_taps"] = tuple(module_options["feature_taps"])
    return MobileNet(model_entry(name).resolve(**architecture), **module_options)


def feature_info(name: str, **overrides: Any) -> dict[str, FeatureInfo]:
    """Tappable feature maps (name, layer, stride, channels) of a model, without running it."""
    return arch.feature_info(model_spec(name, **overrides))
