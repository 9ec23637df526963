"""`heads.resize_bilinear` as one ONNX `Resize`, for the ONNX export (importing this module registers it).

jax2onnx would lower the primitive's XLA form, two Gathers and a lerp per axis, which ONNX Runtime ran 3x slower
than its Resize kernel on LR-ASPP's 65x65 -> 520x520 logits (12.3 vs 4.0 ms, NHWC, 2 threads).  The output
`sizes` are the input's batch (a Shape, so any batch) then H, W, C: Resize-18's `axes` instead broke ONNX Runtime's
transpose optimizer, and `scales` would round 33 -> 65 down to 64.  `half_pixel` linear with `sizes` is torch's
align_corners=False bilinear: source (x + 0.5) * in / out - 0.5, clamped to the image (ONNX Runtime clamps
as aten does), the weights as float32 rounds them (1.7e-7 relative from our lerps).  `pytorch_half_pixel`, what
torch's own export writes, differs from torch for an output of size 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

from ..heads.resize import resize_bilinear_p


@register_primitive(jaxpr_primitive=resize_bilinear_p.name)
class _ResizeBilinearPlugin(PrimitiveLeafPlugin):
    def lower(self, ctx: Any, eqn: Any) -> Any:
        (x,) = (ctx.get_value_for_var(var) for var in eqn.invars)
        b = ctx.builder

        def const(hint: str, value: np.ndarray) -> Any:
            return b.add_initializer_from_array(ctx.fresh_name(hint), value)

        height, width = eqn.params["size"]
        sizes = b.Concat(b.Shape(x, start=0, end=1),
                         const("resize_sizes", np.asarray([height, width, eqn.invars[0].aval.shape[3]], np.int64)),
                         axis=0)
        none = np.zeros(0, np.float32)  # roi and scales: empty, as ONNX spells "not given"
        out = b.Resize(x, const("resize_roi", none), const("resize_scales", none), sizes, mode="linear",
                       coordinate_transformation_mode="half_pixel")
        aval = eqn.outvars[0].aval
        out.type = ir.TensorType(ir.DataType.FLOAT if aval.dtype == np.float32 else ir.DataType.BFLOAT16)
        out.shape = ir.Shape([d if isinstance(d, int) else str(d) for d in aval.shape])
        return out
