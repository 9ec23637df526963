"""The anchor-free YOLO training loss (detection/yolo_loss.py through `YoloDetectSpec.loss_fn`) against ultralytics
8.4's own `v8DetectionLoss` (on a yolov8n DetectionModel at nc=5, default hyperparameters) on the same raw outputs
and boxes: every loss item, the total and the gradient with respect to the raw outputs (box distribution and class
logits), jitted, 96x128 inputs (grids 12x16, 6x8, 3x4: 252 anchors)."""
import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yolo_reference as yr  # (first: the torchvision stub ultralytics needs)
from yolo_reference import torch

from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss  # noqa: E402

from flax_mobilenet.heads import YoloDetectSpec

HEIGHT, WIDTH = 96, 128
STRIDES = (8, 16, 32)
SIZES = [(HEIGHT // s, WIDTH // s) for s in STRIDES]
A = sum(h * w for h, w in SIZES)
NC, REG_MAX = 5, 16
N, M = 3, 8  # batch and box slots: one compiled function for every case
SPEC = YoloDetectSpec((16, 32, 64), ("p3", "p4", "p5"), STRIDES, "model.22")
TOLERANCE = 1e-5


@functools.cache
def criterion() -> v8DetectionLoss:
    """v8DetectionLoss on (a shallow copy of) the shared yolov8n model at nc=5, with ultralytics' default
    hyperparameters (box 7.5, cls 0.5, dfl 1.5) as `model.args`, as its trainer sets them."""
    model = copy.copy(yr.ultralytics_model("yolov8n.yaml", NC))  # the shared instance stays untouched
    model.args = get_cfg()
    return v8DetectionLoss(model)


def raw_outputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random head outputs in our layout: box logits (N, A, 64) leaning to small distances (so predictions of all
    sizes overlap the boxes) and class logits (N, A, nc)."""
    rng = np.random.default_rng(seed)
    box = rng.normal(0, 1.5, (N, A, 4, REG_MAX)) - 0.35 * np.arange(REG_MAX)
    return box.reshape(N, A, 4 * REG_MAX).astype(np.float32), rng.normal(-1, 2, (N, A, NC)).astype(np.float32)


def reference(box: np.ndarray, cls: np.ndarray, images: list[list[list]]):
    """ultralytics' loss on our outputs (transposed to its train layout) and the images' boxes [(x1, y1, x2, y2,
    label 1-based), ...] (as its batch: normalised cx, cy, w, h, 0-based class).  -> total, items (box, cls, dfl),
    gradients (box, cls) in our layout, and the padded (N, k, 5) [class, x1, y1, x2, y2] its `preprocess` makes
    of them (what ours is given, so both see the same float32 boxes)."""
    compute = criterion()
    rows = [[b, label - 1, (x1 + x2) / 2 / WIDTH, (y1 + y2) / 2 / HEIGHT, (x2 - x1) / WIDTH, (y2 - y1) / HEIGHT]
            for b, image in enumerate(images) for x1, y1, x2, y2, label in image]
    targets = torch.tensor(np.array(rows, np.float32).reshape(-1, 6))
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:]}
    boxes = torch.tensor(box.transpose(0, 2, 1).copy(), requires_grad=True)
    scores = torch.tensor(cls.transpose(0, 2, 1).copy(), requires_grad=True)
    feats = [torch.zeros(N, 1, h, w) for h, w in SIZES]  # only their shapes are read
    loss, items = compute({"boxes": boxes, "scores": scores, "feats": feats}, batch)
    total = loss.sum()  # what its trainer backpropagates
    total.backward()
    scale = torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT], dtype=torch.float32)
    padded = compute.preprocess(targets, N, scale)
    return (total.item(), np.array([items["box_loss"], items["cls_loss"], items["dfl_loss"]], np.float64),
            boxes.grad.numpy().transpose(0, 2, 1), scores.grad.numpy().transpose(0, 2, 1), padded.numpy())


def as_batch(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's padded (N, k, 5) [class, x1, y1, x2, y2] -> our boxes (N, M, 4), labels (N, M) 1-based,
    box_mask (N, M), zero padding."""
    boxes, labels, mask = np.zeros((N, M, 4), np.float32), np.zeros((N, M), np.int32), np.zeros((N, M), bool)
    k = padded.shape[1]
    real = padded[..., 1:].sum(-1) > 0  # the reference's own mask
    boxes[:, :k], labels[:, :k], mask[:, :k] = padded[..., 1:], np.where(real, padded[..., 0] + 1, 0), real
    return boxes, labels, mask


@functools.cache
def ours_fn(options: tuple = ()):
    loss = SPEC.loss_fn((HEIGHT, WIDTH), **dict(options))

    def total(box, cls, batch):
        return loss({"box_distributions": box, "class_logits": cls}, batch)

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))


def ours(box_logits, class_logits, boxes, labels, mask, **options):
    batch = {"boxes": jnp.asarray(boxes), "labels": jnp.asarray(labels), "box_mask": jnp.asarray(mask)}
    function = ours_fn(tuple(sorted(options.items())))
    (total, items), (box_grad, cls_grad) = function(jnp.asarray(box_logits), jnp.asarray(class_logits), batch)
    return (float(total), np.array([items["box_loss"], items["class_loss"], items["dfl_loss"]], np.float64),
            np.asarray(box_grad), np.asarray(cls_grad))


def relative(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b) / np.maximum(np.abs(b), 1e-12)))


def compare(name: str, seed: int, images: list[list[list]], parity_report):
    """Ours against the reference on `images` and raw outputs of `seed`; -> ours (total, items, grads), batch."""
    box, cls = raw_outputs(seed)
    ref_total, ref_items, ref_box_grad, ref_cls_grad, padded = reference(box, cls, images)
    batch = as_batch(padded)
    total, items, box_grad, cls_grad = ours(box, cls, *batch)
    errors = {"total": relative(total, ref_total),
              **{key: relative(a, b) for key, a, b in zip(("box", "cls", "dfl"), items, ref_items)}}
    grad_errors = {key: float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))  # 0 when both are 0
                   for key, a, b in (("box grad", box_grad, ref_box_grad), ("cls grad", cls_grad, ref_cls_grad))}
    for key, value in {**errors, **grad_errors}.items():
        parity_report[f"yolov8 loss {name} {key} (rel)"] = value
    assert np.all(np.isfinite(box_grad)) and np.all(np.isfinite(cls_grad))
    assert max(errors.values()) <= TOLERANCE, f"{name}: total/box/cls/dfl {[total, *items]} vs " \
        f"{[ref_total, *ref_items]}"
    assert max(grad_errors.values()) <= TOLERANCE, f"{name}: gradient errors {grad_errors}"
    return (total, items, box_grad, cls_grad), batch


MIXED = [
    # several boxes, overlapping (anchors claimed by two boxes), of all sizes
    [[20, 20, 60, 64, 1], [30, 28, 70, 70, 2], [64, 8, 120, 90, 3], [5, 40, 25, 60, 2], [70, 30, 110, 80, 4]],
    [],  # no boxes
    # tiny boxes (sides under 16, widened by the assigner: 3x5, 6x40, 40x6, 10x10, 2x2 on a cell centre) and boxes
    # at the borders (corners, the whole image)
    [[40, 30, 43, 35, 1], [60, 12, 66, 52, 2], [70, 70, 110, 76, 3], [90, 40, 100, 50, 5], [11, 79, 13, 81, 4],
     [0, 0, 30, 20, 5], [100, 70, 128, 96, 1], [0, 0, 128, 96, 2]],
]


def test_mixed_batch_matches_ultralytics(parity_report, monkeypatch):
    assigner = criterion().assigner
    contested = []
    resolve = type(assigner).select_highest_overlaps

    def counting(self, mask_pos, *args):  # the reference's anchors claimed by several boxes
        contested.append(int((mask_pos.sum(-2) > 1).sum()))
        return resolve(self, mask_pos, *args)

    monkeypatch.setattr(type(assigner), "select_highest_overlaps", counting)
    (total, items, box_grad, cls_grad), (boxes, labels, mask) = compare("mixed", 0, MIXED, parity_report)
    assert np.all(items > 0) and contested[-1] > 0
    assert np.all(box_grad[1] == 0) and np.any(cls_grad[1] != 0)  # the image without boxes: class loss only
    monkeypatch.setattr(assigner, "stride_val", 0.0)  # without 8.4's widening of small boxes: other items
    assert not np.allclose(reference(*raw_outputs(0), MIXED)[1], items, rtol=1e-3)

    # Padded rows with garbage (NaN, inf, huge, inverted boxes; out-of-range labels) change nothing, also between
    # real rows (same compiled function).
    box, cls = raw_outputs(0)
    order = [0, 5, 1, 6, 2, 3, 7, 4]  # real rows moved apart, padding in between
    garbage = np.array([[np.nan, 1, 2, 3], [-1e30, 5, 1e30, 7], [50, 50, 10, 10], [np.inf, -np.inf, 0, 0],
                        [30, 30, 31, 31], [0, 0, 128, 96], [8, 8, 40, 40], [1, 2, 3, 4]], np.float32)
    g_boxes = np.broadcast_to(garbage, boxes.shape).copy()
    g_labels = np.broadcast_to(np.array([0, 99, -5, 3, 1, 2, 7, 0], np.int32), labels.shape).copy()
    g_mask = np.zeros_like(mask)
    for b in range(N):
        real = int(mask[b].sum())
        slots = sorted(order[:real])  # the real rows keep their order
        g_boxes[b, slots], g_labels[b, slots], g_mask[b, slots] = boxes[b, :real], labels[b, :real], True
    again = ours(box, cls, g_boxes, g_labels, g_mask)
    assert again[0] == total and all(np.array_equal(a, b) for a, b in zip(again[1:], (items, box_grad, cls_grad)))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_batches_match_ultralytics(seed, parity_report):
    """Up to M random boxes per image (sides 2-90 px, clipped to the image): many overlap, many are tiny."""
    rng = np.random.default_rng(100 + seed)
    images = [yr.random_box_rows(rng, int(rng.integers(0, M + 1)), NC, HEIGHT, WIDTH, (2, 90), (2, 70))
              for _ in range(N)]
    compare(f"random {seed}", 10 + seed, images, parity_report)


def test_batch_without_boxes_matches_ultralytics(parity_report):
    (total, items, box_grad, _), _ = compare("no boxes", 2, [[]] * N, parity_report)
    assert items[0] == 0 and items[2] == 0 and total > 0 and np.all(box_grad == 0)


def test_gains_and_unknown_options(parity_report):
    box, cls = raw_outputs(3)
    batch = as_batch(reference(box, cls, MIXED)[-1])
    _, items, _, _ = ours(box, cls, *batch)
    _, scaled, _, _ = ours(box, cls, *batch, box=1.0, cls=2.0, dfl=0.5)
    np.testing.assert_allclose(scaled, items * np.array([1.0 / 7.5, 2.0 / 0.5, 0.5 / 1.5]), rtol=1e-6)
    with pytest.raises(TypeError, match="fl_gamma"):
        SPEC.loss_fn((HEIGHT, WIDTH), fl_gamma=1.5)
