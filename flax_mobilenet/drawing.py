"""Pictures of dense predictions for people: class masks blended over the image, boxes with labels and scores."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def class_colours(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, class 0 (background) black; fixed, so the same class keeps its colour."""
    colours = np.random.default_rng(0).integers(64, 256, (num_classes, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def overlay_mask(image: Image.Image, classes: np.ndarray, num_classes: int, opacity: float = 0.5) -> Image.Image:
    """`image` with the (h, w) class map (any size: nearest-neighbour resized to the image) blended over it."""
    mask = Image.fromarray(classes.astype(np.uint8 if num_classes <= 256 else np.int32))
    mask = np.asarray(mask.resize(image.size, Image.NEAREST))
    colours = class_colours(num_classes)[mask].astype(np.float32)
    pixels = np.asarray(image.convert("RGB"), np.float32)
    blended = np.where(mask[..., None] > 0, (1 - opacity) * pixels + opacity * colours, pixels)
    return Image.fromarray(np.round(blended).astype(np.uint8))


def draw_boxes(image: Image.Image, boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
               names: Optional[Sequence[str]], num_classes: int) -> Image.Image:
    """`image` with each xyxy box (image pixels) outlined in its class colour and captioned 'label 0.87'."""
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    colours = class_colours(num_classes)
    for box, label, score in zip(boxes, labels, scores):
        colour = tuple(int(c) for c in colours[int(label) % num_classes])
        draw.rectangle([float(v) for v in box], outline=colour, width=max(1, round(min(picture.size) / 200)))
        caption = f"{names[label] if names else label} {score:.2f}"
        draw.text((float(box[0]) + 2, float(box[1]) + 1), caption, fill=colour)
    return picture
