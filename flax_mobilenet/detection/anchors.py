"""SSD default boxes, as torchvision's `DefaultBoxGenerator` (`models/detection/anchor_utils.py`).

The anchors depend on shapes only, so they are computed once in NumPy (float32, torchvision's operation
order, so they agree to the bit) and enter a jitted function as a constant.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

# ssdlite320_mobilenet_v3_large: DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
# (steps=None, clip=True, scales estimated from the ratios).
SSDLITE_ASPECT_RATIOS: tuple[tuple[int, ...], ...] = ((2, 3),) * 6
SSDLITE_MIN_RATIO = 0.2
SSDLITE_MAX_RATIO = 0.95


def default_box_scales(num_outputs: int, min_ratio: float, max_ratio: float) -> list[float]:
    """s_k = min + (max - min) k / (m - 1) for each map, then 1.0 (one map: [min, max])."""
    if num_outputs > 1:
        scales = [min_ratio + (max_ratio - min_ratio) * k / (num_outputs - 1.0) for k in range(num_outputs)]
        return scales + [1.0]
    return [min_ratio, max_ratio]


def num_anchors_per_location(aspect_ratios: Sequence[Sequence[float]] = SSDLITE_ASPECT_RATIOS) -> list[int]:
    """2 square boxes + 2 per aspect ratio, per feature map."""
    return [2 + 2 * len(r) for r in aspect_ratios]


def _wh_pairs(aspect_ratios, scales) -> list[np.ndarray]:
    pairs = []
    for k, ratios in enumerate(aspect_ratios):
        s_k, s_prime = scales[k], math.sqrt(scales[k] * scales[k + 1])
        wh = [[s_k, s_k], [s_prime, s_prime]]
        for ar in ratios:
            w, h = scales[k] * math.sqrt(ar), scales[k] / math.sqrt(ar)
            wh.extend([[w, h], [h, w]])
        pairs.append(np.asarray(wh, np.float64).astype(np.float32))
    return pairs


def default_boxes(feature_sizes: Sequence[Sequence[int]], image_size: Sequence[int],
                  aspect_ratios: Sequence[Sequence[float]] = SSDLITE_ASPECT_RATIOS,
                  min_ratio: float = SSDLITE_MIN_RATIO, max_ratio: float = SSDLITE_MAX_RATIO,
                  scales: Optional[Sequence[float]] = None, steps: Optional[Sequence[int]] = None,
                  clip: bool = True) -> np.ndarray:
    """The (A, 4) float32 xyxy pixel anchors of one image, in torchvision's order.

    `feature_sizes`: (height, width) of each head's feature map; `image_size`: (height, width) of the
    (transformed) input. Order: map by map, then location row-major, then box: (s_k, s_k),
    (s'_k, s'_k), then (w, h), (h, w) for each aspect ratio. Defaults are ssdlite320_mobilenet_v3_large's.
    """
    if steps is not None and len(steps) != len(aspect_ratios):
        raise ValueError("aspect_ratios and steps should have the same length")
    if len(feature_sizes) != len(aspect_ratios):
        raise ValueError(f"{len(feature_sizes)} feature maps for {len(aspect_ratios)} aspect-ratio lists")
    scales = list(scales) if scales is not None else default_box_scales(len(aspect_ratios), min_ratio, max_ratio)
    pairs = _wh_pairs(aspect_ratios, scales)
    f32 = np.float32
    image_h, image_w = int(image_size[0]), int(image_size[1])
    boxes = []
    for k, (f_h, f_w) in enumerate(feature_sizes):
        if steps is not None:  # a Python float in torch, applied to a float32 tensor in float32
            x_f, y_f = f32(image_w / steps[k]), f32(image_h / steps[k])
        else:
            x_f, y_f = f32(f_w), f32(f_h)
        shifts_x = (np.arange(f_w, dtype=f32) + f32(0.5)) / x_f
        shifts_y = (np.arange(f_h, dtype=f32) + f32(0.5)) / y_f
        shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")
        centers = np.stack((shift_x.reshape(-1), shift_y.reshape(-1)), axis=-1)  # (HW, 2)
        wh = np.clip(pairs[k], f32(0), f32(1)) if clip else pairs[k]
        n = len(wh)
        centers = np.repeat(centers, n, axis=0)  # (HW * n, 2): each location n times
        wh = np.tile(wh, (int(f_h) * int(f_w), 1))
        boxes.append(np.concatenate((centers, wh), axis=1))
    cxcywh = np.concatenate(boxes, axis=0).astype(f32)
    xy_size = np.asarray([image_w, image_h], f32)
    half = f32(0.5) * cxcywh[:, 2:]
    return np.concatenate(((cxcywh[:, :2] - half) * xy_size, (cxcywh[:, :2] + half) * xy_size), axis=1)


def conv_out(size: int, stride: int = 2) -> int:
    """Output size of a stride-2 conv with 'same'-style padding (k=3,p=1 or k=5,p=2): ceil(size / 2)."""
    return -(-size // stride)


def ssdlite_feature_sizes(image_size: Sequence[int], num_maps: int = 6) -> list[tuple[int, int]]:
    """Head feature-map sizes of ssdlite320_mobilenet_v3_large for an input of (height, width): the
    MobileNetV3 C4 map (stride 16), C5 (stride 32), then 4 extra stride-2 blocks; each stride-2 layer
    maps n -> ceil(n / 2)."""
    h, w = int(image_size[0]), int(image_size[1])
    for _ in range(4):
        h, w = conv_out(h), conv_out(w)
    sizes = [(h, w)]
    for _ in range(num_maps - 1):
        h, w = conv_out(h), conv_out(w)
        sizes.append((h, w))
    return sizes


def ssdlite_anchors(image_size: Sequence[int] = (320, 320)) -> np.ndarray:
    """ssdlite320_mobilenet_v3_large's anchors for an input of (height, width): (A, 4) xyxy pixels."""
    return default_boxes(ssdlite_feature_sizes(image_size), image_size)
