"""ONNX through jax2onnx, rewritten into the graph ONNX Runtime runs fastest, checked in ONNX Runtime.

jax2onnx traces the folded model's jaxpr: with `depthwise_impl='lax'` each depthwise conv is one grouped
`Conv` between NHWC<->NCHW `Transpose`s, each 1x1 conv (a dot_general) an NHWC `Einsum`, ReLU6 a
`Max`/`Min` pair.  ONNX Runtime ran that 2.3x slower than torchvision's ONNX export of the same model
(MobileNetV2, batch 1, on a busy 2-core VM: 89 vs 38 ms), so the graph is rewritten after conversion (after
which ONNX Runtime's optimized graph equals the one it makes of torchvision's, plus one input Transpose,
and runs at 1.00-1.07x its time: benchmarks/cpu_inference.py):

1. each NHWC 1x1 `Einsum` with a constant weight becomes Transpose -> 1x1 `Conv` -> Transpose, and so
   does each Dense on a (batch, 1, 1, C) tensor (the squeeze-excite gates), which jax2onnx emits as
   Reshape -> Gemm -> Reshape with shape arithmetic (Shape/Slice/Concat) for the symbolic batch; each
   NHWC `ReduceMean` over axes 1, 2 becomes Transpose -> `GlobalAveragePool` (-> Transpose or Flatten);
2. `Max(x, a) -> Min(., b)` becomes `Clip(x, a, b)`, a lone `Max(x, 0)` `Relu`, `relu6(x + 3) / 6`
   `HardSigmoid` (equal up to float32 rounding), which ONNX Runtime fuses into the conv before it;
3. ONNX Runtime's *basic* graph optimizations, applied offline (constant folding, cancelling the transposes
   through the elementwise ops, folding pads and bias adds into the convs), give a plain NCHW graph of
   standard ONNX ops: NHWC images -> one Transpose -> Conv/Clip/Add/... -> logits.  Basic-level output is
   portable (the extended levels would add ONNX Runtime-specific fused ops).

Max pools (ShuffleNet's stem, SPPF, the StemBlock) are a -inf pad and `flax.linen.max_pool(..., 'VALID')`
(`blocks.pooling.max_pool`), which jax2onnx maps to a 2-D MaxPool.  The detection post-processing's per-class NMS is ONNX's `NonMaxSuppression`
(`detection_nms`, the `onnx_nms` primitive: the same keep mask bit for bit): the `fori_loop` of our own NMS
would become a `Loop`, which ONNX Runtime ran at ~20x the time of the whole SSDLite320 model.  The dense
heads' bilinear upsampling (`heads.resize_bilinear`'s primitive) is one ONNX `Resize` (`onnx_resize`) instead of
its XLA form's gathers.

The batch dimension is symbolic ("batch") unless a batch size is given (then it is fixed after the rewrites).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .common import require, version

ARTIFACT = "model.onnx"
DEFAULT_BATCH: Optional[int] = None  # a symbolic batch dimension
OPSET = 23  # jax2onnx's default; onnxruntime >= 1.24 runs it
INPUT_NAME = "images"  # the outputs are named as in export.json (`logits`; detection: `boxes`, `scores`, ...)


def check_installed() -> None:
    """Fail before any work if the converter or the runtime that checks its output is missing."""
    require("jax2onnx", "ONNX export")
    require("onnx", "ONNX export")
    require("onnxruntime", "Running an ONNX export")


@contextlib.contextmanager
def _quiet_plugin_imports() -> Iterator[None]:
    """jax2onnx imports its plugins for every library it knows (equinox, dm-pix, ...) on first use and logs a
    warning with a traceback for each one whose library is absent; we install none of those (not needed)."""
    logger = logging.getLogger("jax2onnx.plugins.plugin_system")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _set_shape(value_info: Any, shape: Sequence[int | str]) -> None:
    """jax2onnx leaves the graph's input/output dims unknown when a reshape depends on the symbolic batch."""
    dims = value_info.type.tensor_type.shape.dim
    del dims[:]
    for size in shape:
        dim = dims.add()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = size


class _Graph:
    """Consumers, producers, constants and static shapes of an ONNX graph, for the local rewrites below."""

    def __init__(self, onnx: Any, graph: Any):
        self.onnx, self.graph = onnx, graph
        self.constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.consumers = collections.defaultdict(list)
        self.producer = {}
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
            for name in node.output:
                self.producer[name] = node
        self.outputs = {o.name for o in graph.output}
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None
                                for d in v.type.tensor_type.shape.dim]
                       for v in (*graph.value_info, *graph.input, *graph.output)
                       if v.type.tensor_type.HasField("shape")}

    def rank(self, name: str) -> Optional[int]:
        return len(self.shapes[name]) if name in self.shapes else None

    def scalar(self, name: str) -> Optional[float]:
        value = self.constants.get(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    def next_node(self, node: Any, op_type: str) -> Optional[Any]:
        """`node`'s only consumer if it is an `op_type` taking node's output first (and not a graph output)."""
        output = node.output[0]
        users = self.consumers[output]
        if output in self.outputs or len(users) != 1 or users[0].op_type != op_type or users[0].input[0] != output:
            return None
        return users[0]

    def replace(self, replacements: dict[int, list[Any]], removed: set[int]) -> None:
        nodes = []
        for node in self.graph.node:
            if id(node) not in removed:
                nodes.extend(replacements.get(id(node), [node]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)


def _pointwise_einsum(node: Any) -> bool:
    equation = next(a.s for a in node.attribute if a.name == "equation").decode().replace(" ", "")
    inputs, out = equation.split("->")
    lhs, _, rhs = inputs.partition(",")
    return (len(lhs) == 4 and len(rhs) == 2 and lhs[3] == rhs[0] and out == lhs[:3] + rhs[1]
            and len(set(lhs + rhs)) == 5)


def _einsum_to_conv(onnx: Any, model: Any) -> None:
    g = _Graph(onnx, model.graph)
    replacements, make = {}, onnx.helper.make_node
    for node in model.graph.node:
        if node.op_type == "Einsum" and len(node.input) == 2 and node.input[1] in g.constants \
                and g.constants[node.input[1]].ndim == 2 and _pointwise_einsum(node):
            out = node.output[0]
            kernel = g.constants[node.input[1]].T[:, :, None, None]  # (C_in, C_out) -> (C_out, C_in, 1, 1)
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(kernel), f"{out}_oihw"))
            replacements[id(node)] = _nhwc_to_conv(out, node.input[0], f"{out}_oihw", None, make)
    g.replace(replacements, set())


def _nhwc_to_conv(out: str, x: str, kernel: str, bias: Optional[str], make: Callable[..., Any]) -> list[Any]:
    """Transpose -> 1x1 Conv -> Transpose computing `out` (NHWC) from `x` (NHWC)."""
    return [make("Transpose", [x], [f"{out}_nchw_in"], perm=[0, 3, 1, 2]),
            make("Conv", [f"{out}_nchw_in", kernel, *([bias] if bias else [])], [f"{out}_nchw"], kernel_shape=[1, 1]),
            make("Transpose", [f"{out}_nchw"], [out], perm=[0, 2, 3, 1])]


def _gates_and_pool(onnx: Any, model: Any) -> None:
    """Dense on (batch, 1, 1, C) -> 1x1 Conv; ReduceMean over NHWC axes 1, 2 -> GlobalAveragePool."""
    g = _Graph(onnx, model.graph)
    replacements, removed, make = {}, set(), onnx.helper.make_node
    for node in model.graph.node:
        if node.op_type == "Gemm" and len(node.input) == 3 and all(name in g.constants for name in node.input[1:]):
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            flatten, unflatten = g.producer.get(node.input[0]), g.next_node(node, "Reshape")
            if (attributes.get("alpha", 1.0), attributes.get("beta", 1.0), attributes.get("transA", 0),
                    attributes.get("transB", 0)) != (1.0, 1.0, 0, 0) or flatten is None or unflatten is None \
                    or flatten.op_type != "Reshape" or len(g.consumers[node.input[0]]) != 1:
                continue
            x, out = flatten.input[0], unflatten.output[0]
            kernel, bias = g.constants[node.input[1]], g.constants[node.input[2]]
            if (g.shapes.get(x, [None])[1:3] != [1, 1] or g.rank(x) != 4 or g.rank(out) != 4 or kernel.ndim != 2
                    or bias.shape != kernel.shape[1:]):
                continue
            model.graph.initializer.append(onnx.numpy_helper.from_array(
                np.ascontiguousarray(kernel.T[:, :, None, None]), f"{out}_oihw"))
            replacements[id(node)] = _nhwc_to_conv(out, x, f"{out}_oihw", node.input[2], make)
            removed.update((id(flatten), id(unflatten)))
        elif node.op_type == "ReduceMean" and len(node.input) == 2 and g.rank(node.input[0]) == 4 \
                and sorted(g.constants.get(node.input[1], np.zeros(0)).tolist()) in ([1, 2], [-3, -2]):
            keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
            x, out = node.input[0], node.output[0]
            replacements[id(node)] = [
                make("Transpose", [x], [f"{out}_nchw_in"], perm=[0, 3, 1, 2]),
                make("GlobalAveragePool", [f"{out}_nchw_in"], [f"{out}_nchw"]),
                make("Transpose", [f"{out}_nchw"], [out], perm=[0, 2, 3, 1]) if keepdims
                else make("Flatten", [f"{out}_nchw"], [out], axis=1)]
    g.replace(replacements, removed)


def _drop_dead_nodes(model: Any) -> None:
    """Nodes none of whose outputs is used (the shape arithmetic of rewritten Dense layers), then initializers."""
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        live = [node for node in graph.node if any(name in used for name in node.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _activations(onnx: Any, model: Any) -> None:
    make = onnx.helper.make_node
    # Max(x, a) -> Min(., b): Clip(x, a, b); a lone Max(x, 0): Relu
    g = _Graph(onnx, model.graph)
    replacements, removed = {}, set()
    for node in model.graph.node:
        if node.op_type != "Max" or len(node.input) != 2 or g.scalar(node.input[1]) is None \
                or g.constants[node.input[1]].dtype.kind != "f":  # integer maxima (post-processing) stay
            continue
        low = node.input[1]
        upper = g.next_node(node, "Min")
        if upper is not None and len(upper.input) == 2 and g.scalar(upper.input[1]) is not None:
            replacements[id(node)] = [make("Clip", [node.input[0], low, upper.input[1]], [upper.output[0]])]
            removed.add(id(upper))
        elif g.scalar(low) == 0.0:
            replacements[id(node)] = [make("Relu", [node.input[0]], [node.output[0]])]
    g.replace(replacements, removed)
    # Add(x, 3) -> Clip(., 0, 6) -> Div(., 6): HardSigmoid (hard-swish is x * that; a HardSwish op would be
    # split into HardSigmoid and Mul by ONNX Runtime's basic optimizations again, as torchvision's is)
    g = _Graph(onnx, model.graph)
    replacements, removed = {}, set()
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or g.scalar(node.input[1]) != 3.0:
            continue
        clip = g.next_node(node, "Clip")
        div = clip is not None and g.next_node(clip, "Div")
        if not div or [g.scalar(name) for name in (*clip.input[1:], div.input[1])] != [0.0, 6.0, 6.0]:
            continue
        replacements[id(node)] = [make("HardSigmoid", [node.input[0]], [div.output[0]], alpha=1 / 6, beta=0.5)]
        removed.update((id(clip), id(div)))
    g.replace(replacements, removed)


def _basic_optimizations(onnx: Any, model: Any) -> Any:
    """ONNX Runtime's basic (portable, standard-op) graph optimizations, applied offline."""
    ort = require("onnxruntime", "ONNX export")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "basic.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    domains = {node.domain for node in optimized.graph.node} | {""}
    kept = [o for o in optimized.opset_import if o.domain in domains]  # ONNX Runtime lists all it knows
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    optimized.producer_name, optimized.producer_version = model.producer_name, model.producer_version
    return optimized


def detection_nms() -> Callable[[Any, Any, float], Any]:
    """The detection post-processing's NMS in the ONNX graph: ONNX's NonMaxSuppression (`onnx_nms`)."""
    from .onnx_nms import nms_keep
    return nms_keep


def convert(forward: Callable[[Any], tuple], shape: Sequence[Optional[int]],
            outputs: Sequence[tuple[str, Sequence[int]]]) -> tuple[bytes, str]:
    jax2onnx = require("jax2onnx", "ONNX export")
    onnx = require("onnx", "ONNX export")
    batch = "batch" if shape[0] is None else shape[0]
    names = [name for name, _ in outputs]

    def set_shapes(batch_dim: int | str) -> None:
        _set_shape(proto.graph.input[0], (batch_dim, *shape[1:]))
        for value_info, (_, output_shape) in zip(proto.graph.output, outputs):
            _set_shape(value_info, (batch_dim, *output_shape))

    with _quiet_plugin_imports():
        from . import onnx_resize  # noqa: F401 (registers the bilinear resize's lowering to ONNX Resize)
        # Always traced with a symbolic batch: with a fixed one jax2onnx keeps the squeeze-excite gates as
        # 2-D Gemm chains between NHWC reshapes, which no longer match the rewrites below.
        proto = jax2onnx.to_onnx(forward, inputs=[("batch", *shape[1:])], model_name="flax_mobilenet",
                                 opset=OPSET, input_names=[INPUT_NAME], output_names=names)
    set_shapes("batch")
    _einsum_to_conv(onnx, proto)
    _gates_and_pool(onnx, proto)
    _activations(onnx, proto)
    _drop_dead_nodes(proto)
    set_shapes(batch)  # a fixed batch, if asked for
    onnx.checker.check_model(proto)
    proto = _basic_optimizations(onnx, proto)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), (f"jax2onnx {version('jax2onnx')} (opset {OPSET}), then 1x1 convs, "
                                       f"activations and onnxruntime {version('onnxruntime')}'s basic "
                                       "graph optimizations")


def session(data: bytes | str, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session with every graph optimization (threads=0: its default, the physical cores)."""
    ort = require("onnxruntime", "Running an ONNX export")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def load(data: bytes, names: Sequence[str]) -> tuple[Callable[[Any], dict[str, np.ndarray]], str]:
    sess = session(data)

    def run(images: Any) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(list(names), {INPUT_NAME: np.asarray(images, np.float32)})))
    return run, f"onnxruntime {require('onnxruntime', 'Running an ONNX export').__version__} (CPUExecutionProvider)"
