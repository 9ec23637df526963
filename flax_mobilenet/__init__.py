"""MobileNet V1/V2/V3 in JAX/Flax, exact to torchvision and timm."""
from .architectures import FeatureInfo, ModelSpec
from .checkpoint import load_variables, save_variables
from .convert import ConversionError, convert_state_dict
from .inference import compile_inference, fold_batchnorm
from .layers import make_divisible
from .models import MobileNet
from .registry import create_model, feature_info, list_models, model_spec

__all__ = [
    "ConversionError", "FeatureInfo", "MobileNet", "ModelSpec", "compile_inference", "convert_state_dict",
    "create_model", "feature_info", "fold_batchnorm", "list_models", "load_variables", "make_divisible", "model_spec", "save_variables",
]
__version__ = "0.1.0"
