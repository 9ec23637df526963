"""YOLOv5's training loss (detection/yolov5_loss.py through `Yolov5DetectSpec.loss_fn`) against the `yolov5` 7.0
package's own `ComputeLoss` on the same raw outputs and boxes: every loss item, the total and the gradient with
respect to the raw outputs, jitted, 64x96 inputs (grids 8x12, 4x6, 2x3).

The reference gets its targets normalised as yolov5's xyxy2xywhn writes them (float32); ours takes pixels.  For
centres on half pixels both land on the same grid coordinates bit for bit (the crafted boxes on cell edges rely
on that); elsewhere they may differ by an ulp, far below the tolerance."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from yolo_reference import random_box_rows, torch, yolov5_model  # first: the torchvision stub yolov5 needs

from yolov5.utils.loss import ComputeLoss  # noqa: E402

from flax_mobilenet.heads import Yolov5DetectSpec

HEIGHT, WIDTH = 64, 96
STRIDES = (8, 16, 32)
SPEC = Yolov5DetectSpec((16, 32, 64), ("p3", "p4", "p5"), STRIDES, "model.24")
SCRATCH_LOW = {"box": 0.05, "cls": 0.5, "obj": 1.0, "anchor_t": 4.0, "cls_pw": 1.0, "obj_pw": 1.0,
               "fl_gamma": 0.0, "label_smoothing": 0.0}
TOLERANCE = 1e-5
N, M = 4, 8  # the nc=3 cases' batch and box slots (one compiled function for all of them)


def rescaled_hyp(nc: int, **overrides) -> dict:
    """What yolov5's train.py hands ComputeLoss: the hyp gains rescaled to 3 levels, nc classes and the image side
    (this port's imgsz: the longer side)."""
    hyp = {**SCRATCH_LOW, **overrides}
    nl, imgsz = 3, max(HEIGHT, WIDTH)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


def raw_outputs(seed: int, n: int, nc: int) -> list[np.ndarray]:
    """The head's raw training outputs per level, (n, anchors, ny, nx, 5 + nc), as yolov5's Detect returns them."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1.5, (n, 3, HEIGHT // s, WIDTH // s, 5 + nc)).astype(np.float32) for s in STRIDES]


def reference(raw: list[np.ndarray], boxes: np.ndarray, labels: np.ndarray, mask: np.ndarray, nc: int,
              balance=None, **overrides):
    """ComputeLoss on the yolov5n Model at nc: (total, [box, obj, cls], gradient (n, A, 5 + nc), per-level target
    indices).  Targets (image, class, cx, cy, w, h) normalised, computed as yolov5's xyxy2xywhn does."""
    model = yolov5_model("yolov5n.yaml", nc)
    model.hyp = rescaled_hyp(nc, **overrides)  # ComputeLoss reads it at construction; removed at once (shared)
    try:
        compute = ComputeLoss(model)
    finally:
        del model.hyp
    if balance is not None:
        compute.balance = list(balance)
    size = np.array([WIDTH, HEIGHT], np.float32)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2 / size
    extent = (boxes[..., 2:] - boxes[..., :2]) / size
    rows = [[b, labels[b, m] - 1, *centre[b, m], *extent[b, m]]
            for b in range(boxes.shape[0]) for m in range(boxes.shape[1]) if mask[b, m]]
    targets = torch.tensor(np.array(rows, np.float32).reshape(-1, 6))
    p = [torch.tensor(x, requires_grad=True) for x in raw]
    total, items = compute(p, targets)
    total.sum().backward()
    grad = np.concatenate([x.grad.numpy().reshape(x.shape[0], -1, 5 + nc) for x in p], axis=1)
    indices = compute.build_targets(p, targets)[2]
    return total.item(), items.numpy(), grad, indices


@functools.cache
def ours_fn(options: tuple = ()):
    loss = SPEC.loss_fn((HEIGHT, WIDTH), **dict(options))

    def total(logits, batch):
        return loss({"logits": logits}, batch)

    return jax.jit(jax.value_and_grad(total, has_aux=True))


def ours(raw, boxes, labels, mask, **options):
    logits = np.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in raw], axis=1)
    batch = {"boxes": jnp.asarray(boxes), "labels": jnp.asarray(labels), "box_mask": jnp.asarray(mask)}
    (total, items), grad = ours_fn(tuple(sorted(options.items())))(jnp.asarray(logits), batch)
    return (float(total), np.array([items["box_loss"], items["object_loss"], items["class_loss"]], np.float64),
            np.asarray(grad))


def compare(name, raw, boxes, labels, mask, nc, parity_report, **options):
    total, items, grad = ours(raw, boxes, labels, mask, **options)
    ref_total, ref_items, ref_grad, indices = reference(raw, boxes, labels, mask, nc, **options)
    errors = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip([total, *items], [ref_total, *ref_items])]
    item_error = max(errors)
    grad_error = float(np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad)))
    parity_report[f"yolov5 loss {name} items (rel)"] = item_error
    parity_report[f"yolov5 loss {name} grad (rel of max)"] = grad_error
    assert np.all(np.isfinite(grad))
    assert item_error <= TOLERANCE, f"{name}: total/box/obj/cls {[total, *items]} vs {[ref_total, *ref_items]}"
    assert grad_error <= TOLERANCE, f"{name}: gradient relative error {grad_error:.2e}"
    return (total, items, grad), indices


def padded(rows: list[list], m: int = M):
    """One image's boxes [(x1, y1, x2, y2, label), ...] into (m, 4), (m,), (m,) with zero padding."""
    boxes, labels, mask = np.zeros((m, 4), np.float32), np.zeros(m, np.int32), np.zeros(m, bool)
    for k, (*box, label) in enumerate(rows):
        boxes[k], labels[k], mask[k] = box, label, True
    return boxes, labels, mask


def batch_of(images: list[list[list]], m: int = M):
    parts = [padded(rows, m) for rows in images]
    return tuple(np.stack(x) for x in zip(*parts))


MIXED = [
    # several boxes, two of them (same size) in one P3 cell and anchor: the objectness collision rule
    [[20, 20, 40, 44, 1], [21, 21, 41, 45, 2], [50, 10, 90, 60, 3], [5, 30, 25, 50, 2]],
    [],  # no boxes
    # tiny boxes (2x2: no anchor within 4x; 3.5x4: P3's first only) and boxes at the borders: centres in the first /
    # last cell (no neighbour outside the grid), one exactly on a cell boundary (cx 16 = P3 x 2), edge to edge
    [[40, 30, 42, 32, 1], [60, 12, 63.5, 16, 2], [0, 0, 6, 5, 3], [90, 58, 96, 64, 1], [0, 40, 20, 64, 2],
     [76, 0, 96, 22, 3], [10, 20, 22, 36, 1], [0, 0, 96, 64, 2]],
    # boxes partly outside the image: centres on the right edge (cell 12 of 12, clamped to 11) and the top-left
    # corner (its 'right' neighbour is its own cell: a collision of one box with itself)
    [[10.5, 3.25, 33.75, 29.5, 3], [44, 18, 70, 52, 1], [47, 22, 72, 55, 1], [8, 8, 88, 56, 2],
     [80, 10, 112, 40, 2], [-10, -6, 10, 6, 3], [60, 50, 100, 80, 1]],
]


def has_collision(indices) -> bool:
    """Whether several reference targets share an (image, anchor, cell) on some level."""
    for b, a, gj, gi in indices:
        cells = torch.stack([b, a, gj, gi], 1)
        if cells.shape[0] and torch.unique(cells, dim=0).shape[0] < cells.shape[0]:
            return True
    return False


def test_mixed_batch_matches_yolov5(parity_report):
    boxes, labels, mask = batch_of(MIXED)
    raw = raw_outputs(0, N, 3)
    (total, items, _), indices = compare("mixed", raw, boxes, labels, mask, 3, parity_report)
    assert has_collision(indices)
    assert items[0] > 0 and items[2] > 0

    # Padded rows filled with plausible boxes and labels change nothing (same compiled function).
    rng = np.random.default_rng(1)
    garbage_boxes = np.where(mask[..., None], boxes, rng.uniform(0, 60, boxes.shape).astype(np.float32))
    garbage_boxes[..., 2:] = np.where(mask[..., None], garbage_boxes[..., 2:], garbage_boxes[..., :2] + 20)
    garbage_labels = np.where(mask, labels, 2).astype(np.int32)
    again = ours(raw, garbage_boxes, garbage_labels, mask)
    assert again[0] == total and np.array_equal(again[1], items)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_batches_match_yolov5(seed, parity_report):
    """Up to M random boxes per image: many share cells on P4/P5 (grids 4x6, 2x3)."""
    rng = np.random.default_rng(100 + seed)
    images = [random_box_rows(rng, int(rng.integers(0, M + 1)), 3, HEIGHT, WIDTH, (4, 70), (4, 60))
              for _ in range(N)]
    boxes, labels, mask = batch_of(images)
    compare(f"random {seed}", raw_outputs(10 + seed, N, 3), boxes, labels, mask, 3, parity_report)


def test_batch_without_boxes_matches_yolov5(parity_report):
    boxes, labels, mask = batch_of([[]] * N)
    (total, items, _), _ = compare("no boxes", raw_outputs(2, N, 3), boxes, labels, mask, 3, parity_report)
    assert items[0] == 0 and items[2] == 0 and total > 0


def test_single_class_matches_yolov5(parity_report):
    """nc = 1: no class loss (the reference skips it); its own model and compiled function."""
    rng = np.random.default_rng(7)
    images = [[row[:4] + [1] for row in MIXED[0]], random_box_rows(rng, 5, 1, HEIGHT, WIDTH, (4, 70), (4, 60))]
    boxes, labels, mask = batch_of(images, 5)
    (_, items, grad), _ = compare("nc=1", raw_outputs(3, 2, 1), boxes, labels, mask, 1, parity_report)
    assert items[2] == 0 and np.all(grad[..., 5:] == 0)


def test_options_match_yolov5(parity_report):
    """Overridden hyp values (before train.py's rescaling), balance included."""
    options = {"box": 0.07, "cls": 0.3, "obj": 0.7, "anchor_t": 3.0, "cls_pw": 1.5, "obj_pw": 0.8,
               "label_smoothing": 0.1, "balance": (3.0, 1.5, 0.5)}
    boxes, labels, mask = batch_of(MIXED)
    compare("options", raw_outputs(4, N, 3), boxes, labels, mask, 3, parity_report, **options)


def test_loss_fn_names_unknown_options():
    with pytest.raises(TypeError, match="fl_gamma"):
        SPEC.loss_fn((HEIGHT, WIDTH), fl_gamma=1.5)
