"""Pictures of dense predictions for people: class masks blended over the image, boxes with labels and scores."""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Saturated, mutually distinct box colours (RGB), cycled by class index: the same class keeps its colour.
BOX_PALETTE = (
    (255, 56, 56), (0, 200, 83), (41, 121, 255), (255, 214, 0), (213, 0, 249), (0, 229, 255), (255, 109, 0),
    (118, 255, 3), (255, 23, 140), (0, 150, 136), (101, 31, 255), (255, 171, 0), (0, 176, 255), (174, 234, 0),
    (197, 17, 98), (29, 233, 182), (255, 61, 0), (170, 0, 255), (100, 221, 23), (48, 79, 254),
)


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


def box_colour(label: int) -> tuple[int, int, int]:
    """The box colour of a class index (`BOX_PALETTE`, cycled)."""
    return BOX_PALETTE[int(label) % len(BOX_PALETTE)]


def text_colour(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with `background` (WCAG relative luminance)."""
    channels = np.asarray(background[:3], np.float64) / 255.0
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ np.array([0.2126, 0.7152, 0.0722]))
    return (0, 0, 0) if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else (255, 255, 255)


def annotation_style(image_size: tuple[int, int]) -> tuple[int, int]:
    """(line width, font size) in pixels for an image of `image_size` (w, h): both grow with the image, as
    ultralytics' Annotator (line width max(round((w + h) / 2 * 0.003), 2)); font max(round((w + h) / 2 * 0.03), 12)."""
    mean_side = sum(image_size) / 2
    return max(round(mean_side * 0.003), 2), max(round(mean_side * 0.03), 12)


@functools.lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled TrueType font at `size` pixels (offline; Pillow >= 10.1 with FreeType), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):  # old Pillow or no FreeType: a fixed-size bitmap font
        return ImageFont.load_default()


class LabelBox(NamedTuple):
    """A caption's filled rectangle [x0, x1) x [y0, y1) in image pixels."""
    x0: int
    y0: int
    x1: int
    y1: int


def _overlaps(rect: tuple[int, int, int, int], placed: np.ndarray) -> bool:
    if not len(placed):
        return False
    x0, y0, x1, y1 = rect
    return bool(np.any((x0 < placed[:, 2]) & (placed[:, 0] < x1) & (y0 < placed[:, 3]) & (placed[:, 1] < y1)))


def place_labels(boxes: np.ndarray, label_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 line_width: int = 0) -> list[Optional[LabelBox]]:
    """Where each caption goes: a rectangle of `label_sizes[i]` (w, h) on top of box i (xyxy), its left edge at the
    box's outer left edge, just above the box (inside it when the box touches the image's top), kept inside the image
    (w, h); then, in order, moved up or down by the least distance that clears every label placed before it (the
    nearest free position, among those that touch a placed label's edge).  None where no position is free (a crowded
    picture): that box keeps its outline, without a caption covering another."""
    width, height = image_size
    placed = np.zeros((0, 4), np.int64)
    result = []
    half = line_width // 2
    for box, (w, h) in zip(np.asarray(boxes, np.float64).reshape(-1, 4), label_sizes):
        left, top = min(box[0], box[2]), min(box[1], box[3])
        x0 = int(np.clip(round(left) - half, 0, max(width - w, 0)))
        above = round(top) - half - h
        preferred = above if above >= 0 else max(round(top) - half, 0)  # at the image's top edge: inside the box
        preferred = int(min(preferred, max(height - h, 0)))
        # Candidate tops: the preferred one, flush against the edges of every placed label in this column, the image's
        # edges (the free positions nearest the preferred one are among them).
        column = placed[(x0 < placed[:, 2]) & (placed[:, 0] < x0 + w)]
        candidates = np.concatenate([[preferred], column[:, 3], column[:, 1] - h, [0, height - h]])
        candidates = candidates[(candidates >= 0) & (candidates <= max(height - h, 0))]
        order = np.argsort(np.abs(candidates - preferred), kind="stable")
        free = [int(y) for y in candidates[order] if not _overlaps((x0, int(y), x0 + w, int(y) + h), column)]
        if not free:
            result.append(None)
            continue
        rect = LabelBox(x0, free[0], x0 + w, free[0] + h)
        placed = np.concatenate([placed, np.asarray([rect], np.int64)])
        result.append(rect)
    return result


def draw_boxes(image: Image.Image, boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
               names: Optional[Sequence[str]] = None, num_classes: Optional[int] = None, *,
               line_width: Optional[int] = None, font_size: Optional[int] = None,
               return_label_boxes: bool = False):
    """`image` with each xyxy box (image pixels) outlined in its class colour and captioned 'name 0.87' on a filled
    label in that colour, in black or white text (whichever contrasts more).

    Line width and font size grow with the image (`annotation_style`; override with `line_width`, `font_size`); the
    font is Pillow's bundled TrueType one.  Boxes are drawn first, then the labels on top, each placed by
    `place_labels` (above its box, inside at the image's top edge, shifted so labels do not cover each other, left
    out where no place is free; in the given order, so pass the boxes best first).  `names[label]` names a class (its number when `names` is None or
    too short).  `num_classes` is accepted for compatibility and not needed (colours cycle over `BOX_PALETTE`).
    With `return_label_boxes`, returns (picture, list of `LabelBox`).
    """
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    default_width, default_font = annotation_style(picture.size)
    lw = int(line_width or default_width)
    font = label_font(int(font_size or default_font))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = [int(label) for label in labels]
    captions = [f"{names[label] if names is not None and 0 <= label < len(names) else label} {float(score):.2f}"
                for label, score in zip(labels, scores)]
    _, glyph_top, _, glyph_bottom = font.getbbox("Hgjy|")
    pad = max(lw // 2, 1)
    text_height = glyph_bottom - glyph_top
    sizes = [(int(np.ceil(font.getlength(caption))) + 2 * pad, text_height + 2 * pad) for caption in captions]

    for box, label in zip(boxes, labels):
        x0, x1 = sorted((float(box[0]), float(box[2])))
        y0, y1 = sorted((float(box[1]), float(box[3])))
        draw.rectangle([x0, y0, x1, y1], outline=box_colour(label), width=lw)
    rects = place_labels(boxes, sizes, picture.size, lw)
    for rect, label, caption in zip(rects, labels, captions):
        if rect is None:  # no free place left for its caption
            continue
        colour = box_colour(label)
        draw.rectangle([rect.x0, rect.y0, rect.x1 - 1, rect.y1 - 1], fill=colour)
        draw.text((rect.x0 + pad, rect.y0 + pad - glyph_top), caption, fill=text_colour(colour), font=font)
    return (picture, rects) if return_label_boxes else picture
