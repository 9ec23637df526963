"""The detection post-processing's per-class NMS as ONNX `NonMaxSuppression`, for the ONNX export.

jax2onnx turns `solve_greedy`'s `fori_loop` into an ONNX `Loop`, which ONNX Runtime interprets step by step
(SSDLite320: ~20x the model's own time).  The ONNX export passes `nms_keep` as `postprocess`'s `nms_method`: one
primitive, `nms_keep_p`, that XLA computes as `detection.nms.greedy_keep` and
that lowers to NonMaxSuppression (ONNX Runtime's kernel) and a scatter of its selection into the keep mask.

Exactness, for ONNX Runtime's CPU kernel (`SuppressByIOU`): it visits the boxes by decreasing score and
keeps one unless a kept one overlaps it with float32 IoU > the float32 threshold, IoU being
inter / (area_kept + area_other - inter) in `box_iou`'s arithmetic (it reads boxes as [y1, x1, y2, x2]: x and
y swap roles, the products are the same; its early outs for empty intersections agree for thresholds >= 0).
Each problem is one batch entry of one class; scores T - i for the valid boxes and 0 below a score threshold
of 0.5 for the others make it visit exactly `solve_greedy`'s order, so its keep mask is ours bit for bit for
well-formed boxes (x1 <= x2, y1 <= y2, as decoded boxes are) and thresholds >= 0 (tests/test_dense_serving.py).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import onnx_ir as ir
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

from ..detection.boxes import float32_above
from ..detection.nms import greedy_keep


def _greedy_keep(boxes: jax.Array, valid: jax.Array, *, iou_threshold: float) -> jax.Array:
    return greedy_keep(boxes, valid, iou_threshold)


nms_keep_p = Primitive("flax_mobilenet_nms_keep")
nms_keep_p.def_impl(_greedy_keep)
nms_keep_p.def_abstract_eval(lambda boxes, valid, *, iou_threshold: jax.core.ShapedArray(valid.shape, np.bool_))
mlir.register_lowering(nms_keep_p, mlir.lower_fun(_greedy_keep, multiple_results=False))


def nms_keep(boxes: jax.Array, valid: jax.Array, iou_threshold: float) -> jax.Array:
    """The keep mask (..., T) of greedy NMS over boxes (..., T, 4) xyxy visited in index order, valid (..., T)
    bool: `greedy_keep` in XLA, NonMaxSuppression in the ONNX graph."""
    if not iou_threshold >= 0:
        raise ValueError(f"NonMaxSuppression matches our NMS for IoU thresholds >= 0, got {iou_threshold}")
    return nms_keep_p.bind(boxes, valid.astype(bool), iou_threshold=float(iou_threshold))


@register_primitive(jaxpr_primitive=nms_keep_p.name)
class _NMSKeepPlugin(PrimitiveLeafPlugin):
    def lower(self, ctx: Any, eqn: Any) -> Any:
        boxes, valid = (ctx.get_value_for_var(var) for var in eqn.invars)
        t = eqn.invars[1].aval.shape[-1]
        b = ctx.builder

        def const(hint: str, value: Any) -> Any:
            return b.add_initializer_from_array(ctx.fresh_name(hint), np.asarray(value))

        ranks = const("nms_ranks", np.arange(t, 0, -1, dtype=np.float32))  # T - i: visited in index order
        flat_valid = b.Reshape(valid, const("nms_scores_shape", [-1, 1, t]))  # problem, class, index
        scores = b.Where(flat_valid, ranks, const("nms_zero", np.float32(0)))
        selected = b.NonMaxSuppression(  # (M, 3): problem, 0, index
            b.Reshape(boxes, const("nms_boxes_shape", [-1, t, 4])), scores, const("nms_max_output", [t]),
            const("nms_iou", [float32_above(eqn.params["iou_threshold"])]),
            const("nms_score_threshold", np.float32([0.5])), center_point_box=0)
        rows = b.Gather(selected, const("nms_problem_index", [0, 2]), axis=1)
        ones = b.Expand(const("nms_true", True), b.Shape(selected, start=0, end=1))
        zeros = b.ConstantOfShape(b.Shape(b.Reshape(valid, const("nms_keep_shape", [-1, t]))),
                                  value=ir.tensor(np.array([False])))
        keep = b.Reshape(b.ScatterND(zeros, rows, ones), b.Shape(valid))
        keep.type = ir.TensorType(ir.DataType.BOOL)  # a graph output needs its type and shape
        keep.shape = ir.Shape([d if isinstance(d, int) else str(d) for d in eqn.outvars[0].aval.shape])
        return keep
