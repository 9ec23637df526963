"""Readable detection pictures (drawing.draw_boxes): sizes that scale with the image, contrasting label text, labels
that do not cover each other."""
import itertools

import numpy as np
from PIL import Image

from flax_mobilenet.drawing import (BOX_PALETTE, annotation_style, box_colour, draw_boxes, label_font, place_labels,
                                    text_colour)

NAMES = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck"]


def grey(width, height):
    return Image.fromarray(np.full((height, width, 3), 128, np.uint8))


def overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_boxes_drawn_where_they_are_and_labels_apart():
    image = grey(810, 1080)
    boxes = np.array([[50, 400, 250, 900], [60, 410, 260, 910], [220, 405, 350, 860], [0, 0, 810, 300],
                      [670, 380, 810, 880], [5, 550, 80, 880], [30, 420, 200, 700], [55, 402, 240, 890]], np.float32)
    labels = [0, 0, 2, 5, 0, 7, 3, 1]
    scores = [0.91, 0.88, 0.5, 0.95, 0.77, 0.4, 0.33, 0.3]
    picture, rects = draw_boxes(image, boxes, labels, scores, NAMES, 91, return_label_boxes=True)
    pixels = np.asarray(picture).astype(int)
    changed = np.abs(pixels - 128).sum(-1) > 0
    lw, _ = annotation_style(image.size)
    assert lw == 3
    for box, label in zip(boxes.astype(int), labels):  # each outline is there, in its class colour
        x0, y0, x1, y1 = box
        assert changed[(y0 + y1) // 2, x0:x0 + lw].all() and changed[(y0 + y1) // 2, min(x1, 809)].all()
    assert tuple(pixels[650, 5]) == box_colour(7)  # truck's left edge, below every label
    assert not changed[1000:, 400:600].any() and not changed[950:, 300:650].any()  # nothing drawn away from boxes
    assert len(rects) == len(boxes)
    for a, b in itertools.combinations(rects, 2):
        assert not overlap(a, b), (a, b)
    for rect, label in zip(rects, labels):
        assert 0 <= rect.x0 < rect.x1 <= 810 and 0 <= rect.y0 < rect.y1 <= 1080
        assert tuple(pixels[rect.y0, rect.x1 - 1]) == box_colour(label)  # filled label background
        region = pixels[rect.y0:rect.y1, rect.x0:rect.x1].reshape(-1, 3)
        assert any(tuple(p) == text_colour(box_colour(label)) for p in region[::3])  # the caption's text
    # The first label sits right above its box; the top-edge box's label goes inside it.
    assert rects[0].y1 == 400 - lw // 2 and rects[0].x0 == 50 - lw // 2
    assert rects[3].y0 == 0 and rects[3].x0 == 0


def test_sizes_scale_with_the_image_and_text_contrasts():
    small, large = annotation_style((320, 240)), annotation_style((4000, 3000))
    assert small == (2, 12) and large[0] == 10 and large[1] > 90
    font = label_font(40)
    _, top, _, bottom = font.getbbox("Hg")
    assert bottom - top > 30  # a TrueType font at that size, not the fixed bitmap one
    assert text_colour((255, 214, 0)) == (0, 0, 0) and text_colour((0, 0, 200)) == (255, 255, 255)
    assert len(set(BOX_PALETTE)) == len(BOX_PALETTE) >= 20
    boxes = np.array([[100, 100, 1000, 800]], np.float32)
    _, (small_rect,) = draw_boxes(grey(1280, 960), boxes / 4, [2], [0.5], NAMES, return_label_boxes=True)
    _, (large_rect,) = draw_boxes(grey(5120, 3840), boxes * 4, [2], [0.5], NAMES, return_label_boxes=True)
    assert (large_rect.y1 - large_rect.y0) > 3 * (small_rect.y1 - small_rect.y0)


def test_place_labels_shifts_to_the_nearest_free_position():
    # Three boxes with the same top-left corner: the labels stack, the first in its place above its box.
    boxes = np.array([[100, 100, 300, 300]] * 3, np.float32)
    rects = place_labels(boxes, [(80, 20)] * 3, (400, 400))
    assert rects[0] == (100, 80, 180, 100)
    assert sorted(r.y0 for r in rects[1:]) == [60, 100]
    # Near the image's top edge: inside the box, and stacked downwards; near the right edge: kept in the image.
    rects = place_labels(np.array([[380, 0, 399, 50]] * 2, np.float32), [(60, 20)] * 2, (400, 400))
    assert rects == [(340, 0, 400, 20), (340, 20, 400, 40)]


def test_predict_call_still_works():
    # predict.py calls draw_boxes(image, boxes, labels, scores, names, num_classes) with numpy rows; names may be None.
    picture = draw_boxes(grey(64, 48), np.array([[4, 4, 40, 30]], np.float32), np.array([3]), np.array([0.75]),
                         None, 91)
    assert isinstance(picture, Image.Image) and picture.size == (64, 48)
    empty = draw_boxes(grey(64, 48), np.zeros((0, 4), np.float32), [], [], NAMES, 8)
    assert (np.asarray(empty) == 128).all()


def test_a_crowded_picture_leaves_captions_out_rather_than_stacking_them():
    # 40 boxes in a 100 px tall picture: only as many 20 px captions as fit in the column are drawn, none overlapping.
    boxes = np.array([[10, 40, 90, 90]] * 40, np.float32)
    rects = place_labels(boxes, [(60, 20)] * 40, (100, 100))
    drawn = [r for r in rects if r is not None]
    assert len(drawn) == 5 and rects[0] == (10, 20, 70, 40)
    for i, a in enumerate(drawn):
        for b in drawn[i + 1:]:
            assert a.y1 <= b.y0 or b.y1 <= a.y0
