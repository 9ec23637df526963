"""PyTorch checkpoints -> Flax variables: the strict, spec-driven engine and the file readers."""
from .engine import convert_state_dict, detect_layout, guess_model, tensor_mappings
from .torch_io import ConversionError, read_state_dict, to_numpy, unwrap_state_dict

__all__ = ["ConversionError", "convert_state_dict", "detect_layout", "guess_model", "read_state_dict",
           "tensor_mappings", "to_numpy", "unwrap_state_dict"]
