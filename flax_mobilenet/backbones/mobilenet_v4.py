"""MobileNetV4 (timm `mobilenetv4_conv_*`, `mobilenetv4_hybrid_*`): tables, resolver, entries.

Tables are timm's `_gen_mobilenet_v4` arch defs (timm/models/mobilenetv3.py), row for row.  Every model is
stem conv 3x3/2 -> stages -> a final 1x1 conv to 960 (its own stage, the stride-32 feature level in timm's
feature_info) -> global pool -> 1x1 conv to 1280 (no bias) -> BN -> act -> classifier.  Convs pad
symmetrically (timm's non-`tf_` padding ''); BatchNorm eps 1e-5, momentum 0.1 (timm defaults).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

from ..blocks.conv_norm_act import ConvNormActSpec
from ..blocks.fused_ib import FusedIBSpec
from ..blocks.mobile_attention import MobileAttentionSpec
from ..blocks.universal_ir import UniversalIRSpec
from ..layers.ops import make_divisible
from ..registry import register
from ..weights import timm_weights
from .spec import ClassifierSpec, Layer, ModelSpec


class V4Row(NamedTuple):
    """One timm arch-def string, e.g. 'uir_r2_a3_k5_s1_e4_c160' = uir(3, 5, 1, 4, 160, repeats=2)."""

    kind: str  # 'cn' conv-BN-act | 'er' fused IB | 'uir' universal IB | 'mqa' multi-query attention
    out: int
    stride: int = 1
    kernel: int = 0  # cn/er: the conv; uir: middle depthwise (0 = none); mqa: key/value downsampling depthwise
    start_kernel: int = 0  # uir: depthwise before the expansion (0 = none)
    expand: float = 1.0
    repeats: int = 1
    heads: int = 0  # mqa
    head_dim: int = 0  # mqa: key and value width
    kv_stride: int = 1  # mqa


def cn(kernel: int, stride: int, out: int) -> V4Row:
    return V4Row("cn", out, stride, kernel)


def er(kernel: int, stride: int, expand: float, out: int) -> V4Row:
    return V4Row("er", out, stride, kernel, expand=expand)


def uir(start: int, mid: int, stride: int, expand: float, out: int, repeats: int = 1) -> V4Row:
    return V4Row("uir", out, stride, mid, start, expand, repeats)


def mqa(heads: int, head_dim: int, out: int, kv_stride: int = 1, kernel: int = 3) -> V4Row:
    return V4Row("mqa", out, 1, kernel, heads=heads, head_dim=head_dim, kv_stride=kv_stride)


HEAD = (cn(1, 1, 960),)  # the last stage of every MNV4
CONV_SMALL = (
    (cn(3, 2, 32), cn(1, 1, 32)),
    (cn(3, 2, 96), cn(1, 1, 64)),
    (uir(5, 5, 2, 3, 96), uir(0, 3, 1, 2, 96, repeats=4), uir(3, 0, 1, 4, 96)),
    (uir(3, 3, 2, 6, 128), uir(5, 5, 1, 4, 128), uir(0, 5, 1, 4, 128), uir(0, 5, 1, 3, 128),
     uir(0, 3, 1, 4, 128, repeats=2)),
    HEAD,
)
CONV_MEDIUM = (
    (er(3, 2, 4, 48),),
    (uir(3, 5, 2, 4, 80), uir(3, 3, 1, 2, 80)),
    (uir(3, 5, 2, 6, 160), uir(3, 3, 1, 4, 160, repeats=2), uir(3, 5, 1, 4, 160), uir(3, 3, 1, 4, 160),
     uir(3, 0, 1, 4, 160), uir(0, 0, 1, 2, 160), uir(3, 0, 1, 4, 160)),
    (uir(5, 5, 2, 6, 256), uir(5, 5, 1, 4, 256), uir(3, 5, 1, 4, 256, repeats=2), uir(0, 0, 1, 4, 256),
     uir(3, 0, 1, 4, 256), uir(3, 5, 1, 2, 256), uir(5, 5, 1, 4, 256), uir(0, 0, 1, 4, 256, repeats=2),
     uir(5, 0, 1, 2, 256)),
    HEAD,
)
CONV_LARGE = (
    (er(3, 2, 4, 48),),
    (uir(3, 5, 2, 4, 96), uir(3, 3, 1, 4, 96)),
    (uir(3, 5, 2, 4, 192), uir(3, 3, 1, 4, 192, repeats=3), uir(3, 5, 1, 4, 192), uir(5, 3, 1, 4, 192, repeats=5),
     uir(3, 0, 1, 4, 192)),
    (uir(5, 5, 2, 4, 512, repeats=4), uir(5, 0, 1, 4, 512), uir(5, 3, 1, 4, 512), uir(5, 0, 1, 4, 512, repeats=2),
     uir(5, 3, 1, 4, 512), uir(5, 5, 1, 4, 512), uir(5, 0, 1, 4, 512, repeats=3)),
    HEAD,
)
HYBRID_MEDIUM = (
    (er(3, 2, 4, 48),),
    (uir(3, 5, 2, 4, 80), uir(3, 3, 1, 2, 80)),
    (uir(3, 5, 2, 6, 160), uir(0, 0, 1, 2, 160), uir(3, 3, 1, 4, 160), uir(3, 5, 1, 4, 160),
     mqa(4, 64, 160, kv_stride=2), uir(3, 3, 1, 4, 160), mqa(4, 64, 160, kv_stride=2), uir(3, 0, 1, 4, 160),
     mqa(4, 64, 160, kv_stride=2), uir(3, 3, 1, 4, 160), mqa(4, 64, 160, kv_stride=2), uir(3, 0, 1, 4, 160)),
    (uir(5, 5, 2, 6, 256), uir(5, 5, 1, 4, 256), uir(3, 5, 1, 4, 256, repeats=2), uir(0, 0, 1, 2, 256),
     uir(3, 5, 1, 2, 256), uir(0, 0, 1, 2, 256), uir(0, 0, 1, 4, 256), mqa(4, 64, 256), uir(3, 0, 1, 4, 256),
     mqa(4, 64, 256), uir(5, 5, 1, 4, 256), mqa(4, 64, 256), uir(5, 0, 1, 4, 256), mqa(4, 64, 256),
     uir(5, 0, 1, 4, 256)),
    HEAD,
)
HYBRID_LARGE = (
    (er(3, 2, 4, 48),),
    (uir(3, 5, 2, 4, 96), uir(3, 3, 1, 4, 96)),
    (uir(3, 5, 2, 4, 192), uir(3, 3, 1, 4, 192, repeats=3), uir(3, 5, 1, 4, 192), uir(5, 3, 1, 4, 192, repeats=2),
     mqa(8, 48, 192, kv_stride=2), uir(5, 3, 1, 4, 192), mqa(8, 48, 192, kv_stride=2), uir(5, 3, 1, 4, 192),
     mqa(8, 48, 192, kv_stride=2), uir(5, 3, 1, 4, 192), mqa(8, 48, 192, kv_stride=2), uir(3, 0, 1, 4, 192)),
    (uir(5, 5, 2, 4, 512, repeats=4), uir(5, 0, 1, 4, 512), uir(5, 3, 1, 4, 512), uir(5, 0, 1, 4, 512, repeats=2),
     uir(5, 3, 1, 4, 512), uir(5, 5, 1, 4, 512), mqa(8, 64, 512), uir(5, 0, 1, 4, 512), mqa(8, 64, 512),
     uir(5, 0, 1, 4, 512), mqa(8, 64, 512), uir(5, 0, 1, 4, 512), mqa(8, 64, 512), uir(5, 0, 1, 4, 512)),
    HEAD,
)


def _block(row: V4Row, in_features: int, out: int, stride: int, act: str, layer_scale: bool):
    if row.kind == "cn":
        return ConvNormActSpec(in_features, out, row.kernel, stride, act, ("conv", "bn1"))
    if row.kind == "er":
        return FusedIBSpec(in_features, make_divisible(in_features * row.expand), out, row.kernel, stride, act)
    if row.kind == "uir":
        return UniversalIRSpec(in_features, make_divisible(in_features * row.expand), out, row.start_kernel,
                               row.kernel, stride, act, layer_scale)
    return MobileAttentionSpec(in_features, out, row.heads, row.head_dim, row.kv_stride, row.kernel, layer_scale)


def resolve_v4(stages: tuple[tuple[V4Row, ...], ...], stem: int, act: str, hybrid: bool, source: str,
               width_mult: float = 1.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> ModelSpec:
    """timm's rules: channels make_divisible(c * width_mult, 8), the stem only when width_mult >= 1
    (`fix_stem`), the 1280-wide head never; expansions make_divisible(in * e, 8); a stage strides in its
    first block only; the hybrids' blocks carry a layer scale."""
    stem = make_divisible(stem * width_mult) if width_mult >= 1.0 else stem
    layers = [Layer(ConvNormActSpec(3, stem, 3, 2, act, ("conv_stem", "bn1")), "")]
    in_features = stem
    for stage_index, stage in enumerate(stages):
        rows = [row for row in stage for _ in range(row.repeats)]
        for index, row in enumerate(rows):
            out = make_divisible(row.out * width_mult)
            block = _block(row, in_features, out, row.stride if index == 0 else 1, act, hybrid)
            layers.append(Layer(block, f"blocks.{stage_index}.{index}"))
            in_features = out
    head = ClassifierSpec(1280, act, hidden_norm=True, hidden_key="conv_head", hidden_norm_key="norm_head")
    return ModelSpec(source, tuple(layers), head, bn_eps, bn_momentum)


def defaults(width_mult: float = 1.0) -> dict:
    return dict(width_mult=width_mult, dropout=0.0, bn_eps=1e-5, bn_momentum=0.1)


resolve_conv_small = functools.partial(resolve_v4, CONV_SMALL, 32, "relu", False)
FIXED = ("width_mult",)
INCEPTION_MEAN_STD = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

# Weights: the first pretrained tag timm's default_cfgs lists for each name, with its eval crop/crop_pct.
register("mobilenetv4_conv_small", resolve_conv_small, defaults(), "timm",
         timm_weights("timm mobilenetv4_conv_small.e2400_r224_in1k"), fixed=FIXED)
register("mobilenetv4_conv_small_050", resolve_conv_small, defaults(0.5), "timm",
         timm_weights("timm mobilenetv4_conv_small_050.e3000_r224_in1k", **INCEPTION_MEAN_STD), fixed=FIXED)
register("mobilenetv4_conv_medium", functools.partial(resolve_v4, CONV_MEDIUM, 32, "relu", False), defaults(),
         "timm", timm_weights("timm mobilenetv4_conv_medium.e500_r256_in1k", 256, 0.95), fixed=FIXED)
register("mobilenetv4_conv_large", functools.partial(resolve_v4, CONV_LARGE, 24, "relu", False), defaults(),
         "timm", timm_weights("timm mobilenetv4_conv_large.e600_r384_in1k", 384, 0.95), fixed=FIXED)
register("mobilenetv4_hybrid_medium", functools.partial(resolve_v4, HYBRID_MEDIUM, 32, "relu", True), defaults(),
         "timm", timm_weights("timm mobilenetv4_hybrid_medium.e200_r256_in12k_ft_in1k", 256, 0.95), fixed=FIXED)
register("mobilenetv4_hybrid_large", functools.partial(resolve_v4, HYBRID_LARGE, 24, "gelu", True), defaults(),
         "timm", timm_weights("timm mobilenetv4_hybrid_large.ix_e600_r384_in1k", 384, 0.95), fixed=FIXED)
