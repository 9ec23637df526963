"""Backbones: the model spec, the one generic builder, and one file per family (tables + registry entries).

`backbones.zoo` imports every family file, which registers its names (the package `__init__` does it).
"""
from .builder import MobileNet, VisionModel, check_images
from .spec import ClassifierSpec, FeatureInfo, Layer, ModelSpec, NeckNode, feature_info

__all__ = ["ClassifierSpec", "FeatureInfo", "Layer", "MobileNet", "ModelSpec", "NeckNode", "VisionModel", "check_images",
           "feature_info"]
