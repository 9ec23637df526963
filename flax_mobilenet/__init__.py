"""The mobile vision family (MobileNet V1-V4, ShuffleNetV2, MobileViT) in JAX/Flax, exact to torchvision and timm."""
from .backbones import ClassifierSpec, FeatureInfo, Layer, MobileNet, ModelSpec, NeckNode, VisionModel
from .backbones import zoo as _zoo  # noqa: F401  (registers every family)
from .checkpoint import load_variables, open_checkpoint, save_variables
from .convert import ConversionError, convert_state_dict
from .inference import compile_inference, fold_batchnorm
from .layers import LayerSettings, make_divisible
from .registry import create_model, feature_info, list_models, model_spec, weights_info
from .weights import WeightsInfo

__all__ = [
    "ClassifierSpec", "ConversionError", "FeatureInfo", "Layer", "LayerSettings", "MobileNet", "ModelSpec", "NeckNode",
    "VisionModel", "WeightsInfo", "compile_inference", "convert_state_dict", "create_model", "feature_info", "fold_batchnorm",
    "list_models", "load_variables", "make_divisible", "model_spec", "open_checkpoint", "save_variables", "weights_info",
]
__version__ = "0.2.0"
