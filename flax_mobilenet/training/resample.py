"""Antialiased bilinear resize of uint8 images on the host, as Pillow computes it, vectorised.

RandomResizedCrop's resize is the host pipeline's largest cost after JPEG decoding.  torchvision's ImageNet recipes
run it through Pillow: a separable triangle filter whose support widens with the downscale factor, weights rounded
to 22-bit fixed point, a horizontal pass rounded to uint8, then a vertical pass.  Pillow's loops are scalar; here
each pass is a sum of whole rows (the horizontal pass on the transposed image), which the compiler vectorises, so
the same arithmetic runs 3-4x faster.  Pillow <= 12 gives the same bytes, but for images over 100x taller than
wide (it runs the vertical pass first there); Pillow 13 sometimes runs the vertical pass first for any image taller
than wide, which moves some pixels by one level (tests/test_resample.py).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import cv2
import numba
import numpy as np

PRECISION_BITS = 22  # Pillow's for 8-bit images: 32 bits less 8 for the pixel and 2 for the filter's overshoot


@functools.lru_cache(maxsize=8192)
def filter_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the first input index, the number of taps and the fixed-point weights [out, max taps] of
    Pillow's bilinear filter (its precompute_coeffs / normalize_coeffs_8bpc: the same float64 operations in the same
    order, so the weights round the same way)."""
    scale = in_size / out_size
    support = max(scale, 1.0)  # the triangle's support, 1, widened by the downscale factor
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int32)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int32) - first
    offsets = np.arange(int(math.ceil(support)) * 2 + 1)
    taps = np.maximum(0.0, 1.0 - np.abs((offsets + first[:, None] - center[:, None] + 0.5) * (1.0 / support)))
    taps[offsets >= count[:, None]] = 0.0
    total = taps[:, 0].copy()
    for k in range(1, taps.shape[1]):  # summed tap by tap, as Pillow does
        total += taps[:, k]
    weights = (0.5 + taps / total[:, None] * (1 << PRECISION_BITS)).astype(np.int32)
    return first, count, weights


@numba.njit(nogil=True, cache=True)
def _resample_rows(source, first, count, weights, out):
    """out[i] = clip((2^21 + sum_k weights[i, k] * source[first[i] + k]) >> 22) over whole rows (2-D uint8)."""
    width = source.shape[1]
    total = np.empty(width, np.int32)
    for i in range(out.shape[0]):
        total[:] = 1 << (PRECISION_BITS - 1)
        for k in range(count[i]):
            row = source[first[i] + k]
            weight = weights[i, k]
            for j in range(width):
                total[j] += np.int32(row[j]) * weight
        for j in range(width):
            out[i, j] = min(max(total[j] >> PRECISION_BITS, 0), 255)


def _resample_axis0(image: np.ndarray, first: np.ndarray, count: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Resample axis 0 of a contiguous (H, W, C) uint8 image: one output row per entry of `first`."""
    out = np.empty((len(first), *image.shape[1:]), np.uint8)
    _resample_rows(image.reshape(len(image), -1), first, count, weights, out.reshape(len(first), -1))
    return out


def resize_bilinear(image: np.ndarray, height: int, width: int, rows: Optional[tuple[int, int]] = None,
                    cols: Optional[tuple[int, int]] = None, mirror: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8: Pillow's antialiased bilinear resize (BILINEAR), horizontal
    pass first.  `rows` / `cols` ((start, stop) in the output) compute only that window of the resized image, the
    same bytes as resizing everything and cropping (an output pixel's taps depend only on its own index), at the
    window's cost: a random crop of a large random resize need not resize what it throws away.  `mirror` flips
    the result left-right at no cost (the horizontal pass's outputs in reverse order)."""
    (row_start, row_stop), (col_start, col_stop) = rows or (0, height), cols or (0, width)
    image = np.ascontiguousarray(image)
    in_height, in_width = image.shape[:2]
    vertical = None
    if in_height == height:  # Pillow skips a pass whose size does not change (its taps would be the identity)
        image = image[row_start:row_stop]
    else:
        first, count, weights = (taps[row_start:row_stop] for taps in filter_taps(in_height, height))
        low, high = first[0], first[-1] + count[-1]  # the input rows the vertical pass reads (both ascend)
        image, vertical = image[low:high], (first - low, count, weights)
    step = -1 if mirror else 1
    if in_width == width:
        image = image[:, col_start:col_stop][:, ::step]
    else:  # the horizontal pass: rows of the transposed image (OpenCV transposes with SIMD)
        taps = (np.ascontiguousarray(taps[col_start:col_stop][::step]) for taps in filter_taps(in_width, width))
        image = cv2.transpose(_resample_axis0(cv2.transpose(np.ascontiguousarray(image)), *taps))
    if vertical is not None:
        image = _resample_axis0(np.ascontiguousarray(image), *vertical)
    return np.ascontiguousarray(image)
