"""TFLite through jax2tf and TensorFlow's TFLiteConverter, checked in LiteRT (XNNPACK, all threads).

The route: `jax2tf.convert` wraps the folded model's StableHLO in a TF function (an XlaCallModule op), saved
as a SavedModel signature with named outputs, and `tf.lite.TFLiteConverter.from_saved_model` legalizes that
StableHLO to TFLite builtin ops (no Select TF ops, so the plain LiteRT runtime runs it).  The input and output
tensors are then renamed after the signature's names, which are export.json's ('images', 'logits', ...).
It is the route the jax2tf docs give for TFLite; there is no other: jax2tf's non-native (TF-op) lowering is
gone from jax (`native_serialization=False` is ignored), and ai-edge-torch (litert-torch) converts PyTorch,
not JAX.  The converter cannot legalize the detection post-processing (its NMS loop), so detection models
export their raw head outputs to TFLite.  With `depthwise_impl='lax'` each depthwise conv is one
DEPTHWISE_CONV_2D; the 1x1 convs become FULLY_CONNECTED.

Two limits of the converter, handled here:
- a batch-polymorphic function converts (for the plain CNNs) into a graph of shape arithmetic that XNNPACK
  runs as ~70 fragments, and not at all for MobileViT, so the batch is fixed: 1 unless a batch size is
  given (export.json states it);
- a Dense layer on a rank-4 input (MobileViT's (batch, P, N, C) tokens; the squeeze-excite gates on
  (batch, 1, 1, C) when their bias is zero, as in torchvision's initialization), and a pointwise conv on a
  1x1 feature map (a 32x32 input's last stages), legalize to an invalid rank-4 `tfl.batch_matmul` ("found
  invalid output rank"), even when the input is flattened to a matrix first; while tracing, these are
  computed as the 1x1 convolution they are (the same products and sums; CONV_2D in the .tflite).
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .common import require, version

ARTIFACT = "model.tflite"
DEFAULT_BATCH: Optional[int] = 1  # a fixed batch (see above)
INPUT_NAME = "images"
SIGNATURE = "serving_default"


def _tensorflow() -> Any:
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ INFO/WARNING lines
    return require("tensorflow", "TFLite export")


def check_installed() -> None:
    """Fail before any work if the converter or the runtime that checks its output is missing."""
    _tensorflow()
    require("ai_edge_litert.interpreter", "Running a TFLite export")


def _dense_as_conv(next_fun: Callable[..., Any], args: tuple, kwargs: dict, context: Any) -> Any:
    """flax method interceptor: a Dense layer on a rank-4 input, or a pointwise conv on a 1x1 map, as the 1x1
    convolution it is (see above)."""
    import flax.linen as nn
    from jax import lax

    from ..layers.conv import PointwiseConv
    module, x = context.module, (args[0] if args else None)
    if not (context.method_name == "__call__" and getattr(x, "ndim", None) == 4
            and (isinstance(module, nn.Dense) or (isinstance(module, PointwiseConv) and x.shape[1:3] == (1, 1)))):
        return next_fun(*args, **kwargs)
    params = module.variables["params"]
    kernel = params["kernel"] if params["kernel"].ndim == 4 else params["kernel"][None, None]
    y = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + params["bias"] if module.use_bias else y


def convert(forward: Callable[[Any], tuple], shape: Sequence[Optional[int]],
            outputs: Sequence[tuple[str, Sequence[int]]]) -> tuple[bytes, str]:
    import flax.linen as nn
    tf = _tensorflow()
    from jax.experimental import jax2tf

    def traced(x: Any) -> Any:
        with nn.intercept_methods(_dense_as_conv):
            return forward(x)

    # The StableHLO lowered for the CPU whatever machine exports: TFLite runs on CPUs, and a GPU lowering
    # may hold custom calls (cuDNN attention) that the converter cannot legalize.
    converted = jax2tf.convert(traced, with_gradient=False, native_serialization_platforms=("cpu",))
    # Named outputs through a SavedModel signature: the .tflite's signature runner then gives each output by
    # name (the order of a flatbuffer's output tensors is the converter's, not ours).
    module = tf.Module()
    module.forward = tf.function(lambda images: dict(zip([name for name, _ in outputs], converted(images))),
                                 autograph=False,
                                 input_signature=[tf.TensorSpec(tuple(shape), tf.float32, name=INPUT_NAME)])
    with tempfile.TemporaryDirectory() as folder:
        tf.saved_model.save(module, folder, signatures={SIGNATURE: module.forward.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        data = _name_signature_tensors(converter.convert())
    return data, f"jax2tf (jax {version('jax')}) + TFLiteConverter (tensorflow {tf.__version__})"


def _name_signature_tensors(data: bytes) -> bytes:
    """The model with its input and output tensors named as its signature (and export.json) names them:
    'images', 'logits' or a detection head's outputs.  The converter names them after the SavedModel's graph
    ('serving_default_images:0', 'StatefulPartitionedCall:0', ...), which is what `get_input_details()`,
    `get_output_details()` and model viewers show."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    for signature in model.signatureDefs or []:
        tensors = model.subgraphs[signature.subgraphIndex].tensors
        for mapping in [*(signature.inputs or []), *(signature.outputs or [])]:
            tensors[mapping.tensorIndex].name = mapping.name
    if sys.byteorder == "big":  # read_model_from_bytearray swapped the buffers to the host's order
        flatbuffer_utils.byte_swap_tflite_model_obj(model, "big", "little")
    return flatbuffer_utils.convert_object_to_bytearray(model)


def interpreter(data: bytes, threads: Optional[int] = None) -> Any:
    """A LiteRT interpreter with its default XNNPACK delegate, on every core unless `threads` is given."""
    litert = require("ai_edge_litert.interpreter", "Running a TFLite export")
    result = litert.Interpreter(model_content=data, num_threads=threads or os.cpu_count() or 1)
    result.allocate_tensors()
    return result


def load(data: bytes, names: Sequence[str]) -> tuple[Callable[[Any], dict[str, np.ndarray]], str]:
    interp = interpreter(data)
    (source,) = interp.get_input_details()
    runner = interp.get_signature_runner(SIGNATURE)
    (input_name,) = runner.get_input_details()

    def run(images: Any) -> dict[str, np.ndarray]:
        images = np.asarray(images, np.float32)
        if images.shape != tuple(source["shape"]):
            raise ValueError(f"this TFLite export takes images of shape {tuple(source['shape'])} (fixed batch), "
                             f"got {images.shape}")
        results = runner(**{input_name: images})
        return {name: np.array(results[name]) for name in names}
    return run, f"ai-edge-litert {version('ai-edge-litert')} (XNNPACK, {os.cpu_count() or 1} threads)"
