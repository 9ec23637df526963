"""The SSD detection primitives against torchvision's own code (anchors, box coder, NMS, postprocess,
matching, loss), all under jit.

torchvision's compiled NMS op does not load on the CPU-only torch here, so `batched_nms` is replaced by a
brute-force reference: torchvision's CPU kernel (float32 IoU compared with a double threshold, visiting
boxes in decreasing score order) written in NumPy, per class as torchvision's `_batched_nms_vanilla`.
The same reference checks our NMS on random boxes with many overlaps.
"""
from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from torch_reference import torch
import torchvision  # noqa: E402  (the shim torch_reference installs)
from torchvision.models.detection import _utils as det_utils  # noqa: E402
from torchvision.models.detection import ssd as tv_ssd  # noqa: E402
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.transform import resize_boxes as tv_resize_boxes  # noqa: E402
from torchvision.ops import boxes as tv_box_ops  # noqa: E402

from flax_mobilenet import detection as det  # noqa: E402
from flax_mobilenet.detection.boxes import float32_above  # noqa: E402


@pytest.fixture(autouse=True)
def _torchvision_ops(monkeypatch):
    # The shim package skips torchvision/__init__.py, which defines _is_tracing (used by ops.boxes).
    monkeypatch.setattr(torchvision, "_is_tracing", lambda: False, raising=False)
    monkeypatch.setattr(tv_box_ops, "batched_nms", torch_batched_nms)
    monkeypatch.setattr(tv_ssd.box_ops, "batched_nms", torch_batched_nms)


# ----------------------------------------------------------------------------------------- references

def reference_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """torchvision's CPU nms kernel in NumPy (a stable descending sort)."""
    boxes = boxes.astype(np.float32)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[overlap.astype(np.float64) > iou_threshold]] = True
    return np.asarray(keep, np.int64)


def reference_batched_nms(boxes, scores, labels, iou_threshold) -> np.ndarray:
    """`_batched_nms_vanilla`: NMS per label, then the kept indices by decreasing score (stable)."""
    keep_mask = np.zeros(len(scores), bool)
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        keep_mask[members[reference_nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = np.nonzero(keep_mask)[0]
    return kept[np.argsort(-scores[kept].astype(np.float64), kind="stable")]


NMS_CALLS: list[tuple[int, int]] = []  # (candidates, kept) of each torch_batched_nms call


def torch_batched_nms(boxes, scores, idxs, iou_threshold):
    keep = reference_batched_nms(boxes.detach().numpy(), scores.detach().numpy(), idxs.numpy(), iou_threshold)
    NMS_CALLS.append((len(scores), len(keep)))
    return torch.from_numpy(keep)


def tv_self(**attributes):
    """A stand-in `self` for SSD's methods: they only read these attributes."""
    return types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), **attributes)


def random_boxes(rng, shape, low, high, min_size, max_size) -> np.ndarray:
    xy = rng.uniform(low, high, size=(*shape, 2))
    wh = rng.uniform(min_size, max_size, size=(*shape, 2))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def max_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ------------------------------------------------------------------------------------------------ anchors

def tv_anchors(generator, feature_sizes, image_size) -> np.ndarray:
    images = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    features = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    with torch.no_grad():
        return generator(images, features)[0].numpy()


@pytest.mark.parametrize("image_size", [(320, 320), (256, 384), (301, 199)])
def test_anchors_match_default_box_generator(image_size, parity_report):
    generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    sizes = det.ssdlite_feature_sizes(image_size)
    expected = tv_anchors(generator, sizes, image_size)
    ours = det.ssdlite_anchors(image_size)
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert det.num_anchors_per_location() == generator.num_anchors_per_location()
    parity_report[f"detection anchors {image_size}"] = max_diff(ours, expected)
    np.testing.assert_array_equal(ours, expected)


def test_anchors_with_steps_and_scales():
    """SSD300-VGG16's generator: explicit scales and steps, varying aspect ratios."""
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    kwargs = dict(scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])
    generator = DefaultBoxGenerator(ratios, **kwargs)
    sizes = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    ours = det.default_boxes(sizes, (300, 300), ratios, **kwargs)
    np.testing.assert_array_equal(ours, tv_anchors(generator, sizes, (300, 300)))
    ours = det.default_boxes(sizes[:3], (300, 300), ratios[:3], min_ratio=0.1, max_ratio=0.8, clip=False)
    reference = DefaultBoxGenerator(ratios[:3], min_ratio=0.1, max_ratio=0.8, clip=False)
    np.testing.assert_array_equal(ours, tv_anchors(reference, sizes[:3], (300, 300)))


def test_feature_sizes_and_anchors_of_the_real_ssdlite():
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3).eval()
    for image_size in [(320, 320), (224, 288)]:
        images = ImageList(torch.zeros(1, 3, *image_size), [image_size])
        with torch.no_grad():
            features = list(model.backbone(images.tensors).values())
            anchors = model.anchor_generator(images, features)[0].numpy()
        assert [tuple(f.shape[-2:]) for f in features] == det.ssdlite_feature_sizes(image_size)
        np.testing.assert_array_equal(det.ssdlite_anchors(image_size), anchors)


# -------------------------------------------------------------------------------------------- box coder

def test_box_coder_matches_torchvision(parity_report):
    rng = np.random.default_rng(0)
    anchors = det.ssdlite_anchors((320, 320))[:1000]
    coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    codes = rng.normal(0, 1.0, (2, len(anchors), 4)).astype(np.float32)
    codes[0, :20, 2:] = 80.0  # beyond bbox_xform_clip * 5
    decoded = np.asarray(jax.jit(det.decode)(codes, anchors))
    expected = np.stack([coder.decode_single(torch.from_numpy(c), torch.from_numpy(anchors)).numpy() for c in codes])
    parity_report["detection decode (px)"] = max_diff(decoded, expected)
    np.testing.assert_allclose(decoded, expected, rtol=1e-6, atol=1e-4)

    gt = random_boxes(rng, (len(anchors),), 0, 300, 2, 200)
    encoded = np.asarray(jax.jit(det.encode)(gt, anchors))
    expected = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(anchors)).numpy()
    parity_report["detection encode"] = max_diff(encoded, expected)
    np.testing.assert_allclose(encoded, expected, rtol=1e-6, atol=1e-5)
    # decode(encode(b)) == b
    np.testing.assert_allclose(np.asarray(det.decode(jnp.asarray(encoded), anchors)), gt, rtol=1e-5, atol=1e-3)


def test_boxes_helpers_match_torchvision():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, (7,), -20, 300, 0, 100), random_boxes(rng, (9,), 0, 300, 1, 100)
    np.testing.assert_array_equal(np.asarray(det.box_iou(a, b)),
                                  tv_box_ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())
    np.testing.assert_array_equal(np.asarray(det.clip_boxes_to_image(a, (200, 250))),
                                  tv_box_ops.clip_boxes_to_image(torch.from_numpy(a), (200, 250)).numpy())
    np.testing.assert_array_equal(np.asarray(det.resize_boxes(a, (320, 320), (480, 640))),
                                  tv_resize_boxes(torch.from_numpy(a), [320, 320], [480, 640]).numpy())
    per_image = np.asarray(det.resize_boxes(np.stack([a, a]), np.array([[320, 320], [320, 320]]),
                                            np.array([[480, 640], [333, 500]])))
    np.testing.assert_array_equal(per_image[1], tv_resize_boxes(torch.from_numpy(a), [320, 320], [333, 500]).numpy())
    for threshold in (0.5, 0.55, 0.45, 0.7):
        t, above = np.float32(threshold), float32_above(threshold)
        for x in (np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))):
            assert (x > above) == (float(x) > threshold)


# -------------------------------------------------------------------------------------------------- NMS

@functools.partial(jax.jit, static_argnames=("iou_threshold", "max_output", "method"))
def _jit_nms(boxes, scores, labels, valid, iou_threshold, max_output, method):
    return det.batched_nms(boxes, scores, labels, valid, iou_threshold, max_output, method)


@pytest.mark.parametrize("method", ["greedy", "fixed_point"])
def test_batched_nms_matches_brute_force(method):
    rng = np.random.default_rng(2)
    n, k = 4, 160
    boxes = random_boxes(rng, (n, k), 0, 60, 8, 40)  # crowded: many overlaps, long suppression chains
    boxes[:, 10:20] = boxes[:, 0:10]  # exact duplicates (IoU 1)
    scores = rng.uniform(0, 1, (n, k)).astype(np.float32)
    scores[:, 30:40] = scores[:, 40:50]  # exact ties: visited in index order
    labels = rng.integers(0, 3, (n, k)).astype(np.int32)
    valid = rng.uniform(size=(n, k)) < 0.85
    valid[3] = False  # an image with nothing
    for threshold, max_output in [(0.5, None), (0.3, 12)]:
        result = _jit_nms(boxes, scores, labels, valid, threshold, max_output, method)
        indices, slots, num_kept = (np.asarray(x) for x in result[:3])
        for i in range(n):
            members = np.nonzero(valid[i])[0]
            expected = members[reference_batched_nms(boxes[i, members], scores[i, members], labels[i, members],
                                                     threshold)]
            assert num_kept[i] == len(expected)
            shown = expected[:indices.shape[1]]
            np.testing.assert_array_equal(indices[i, :len(shown)], shown)
            assert slots[i].sum() == len(shown) and not indices[i, len(shown):].any()
            assert set(np.nonzero(np.asarray(result.keep[i]))[0]) == set(expected)
        assert 0 < num_kept[:3].min() and num_kept.max() < valid.sum(1).max()  # NMS did suppress


# ----------------------------------------------------------------------------------------- postprocess

POSTPROCESS_CASES = {
    # name: image size, classes, logit scale, (score_threshold, nms_iou, topk_candidates, detections_per_img)
    "ssdlite320 defaults": ((320, 320), 91, 1.5, (0.001, 0.55, 300, 300)),
    "non-square, few survivors": ((256, 384), 6, 3.0, (0.5, 0.4, 40, 200)),
}


@pytest.mark.parametrize("case", list(POSTPROCESS_CASES))
def test_postprocess_matches_torchvision(case, parity_report):
    image_size, num_classes, scale, (score_threshold, nms_iou, topk, per_img) = POSTPROCESS_CASES[case]
    rng = np.random.default_rng(3)
    anchors = det.ssdlite_anchors(image_size)
    n, a = 2, len(anchors)
    regression = rng.normal(0, 0.6, (n, a, 4)).astype(np.float32)
    logits = (scale * rng.normal(size=(n, a, num_classes))).astype(np.float32)
    sizes = np.array([image_size, image_size])
    ours = det.postprocess(regression, logits, anchors, sizes, score_threshold=score_threshold, nms_iou=nms_iou,
                           topk_candidates=topk, detections_per_img=per_img)
    ours = jax.tree.map(np.asarray, ours)
    assert ours.boxes.shape == (n, per_img, 4) and ours.labels.dtype == np.int32

    reference = tv_self(score_thresh=score_threshold, nms_thresh=nms_iou, topk_candidates=topk,
                        detections_per_img=per_img)
    NMS_CALLS.clear()
    with torch.no_grad():
        expected = tv_ssd.SSD.postprocess_detections(
            reference, {"bbox_regression": torch.from_numpy(regression), "cls_logits": torch.from_numpy(logits)},
            [torch.from_numpy(anchors)] * n, [image_size] * n)
    assert len(NMS_CALLS) == n and all(kept < candidates for candidates, kept in NMS_CALLS)  # NMS suppressed
    box_error = score_error = 0.0
    for i, detections in enumerate(expected):
        count = len(detections["scores"])
        assert ours.num_valid[i] == count
        assert not ours.scores[i, count:].any() and not ours.boxes[i, count:].any() and not ours.labels[i, count:].any()
        assert np.all(np.diff(ours.scores[i, :count]) <= 0)
        # Same detections; compared in (label, score) order, which float rounding cannot reorder.
        mine = np.lexsort((-ours.scores[i, :count], ours.labels[i, :count]))
        theirs = np.lexsort((-detections["scores"].numpy(), detections["labels"].numpy()))
        np.testing.assert_array_equal(ours.labels[i, :count][mine], detections["labels"].numpy()[theirs])
        box_error = max(box_error, max_diff(ours.boxes[i, :count][mine], detections["boxes"].numpy()[theirs]))
        score_error = max(score_error, max_diff(ours.scores[i, :count][mine], detections["scores"].numpy()[theirs]))
        np.testing.assert_allclose(ours.scores[i, :count], detections["scores"].numpy(), rtol=1e-5, atol=1e-7)
    if case == "ssdlite320 defaults":
        assert ours.num_valid.min() == per_img and min(kept for _, kept in NMS_CALLS) > per_img  # truncated
    else:
        assert 0 < ours.num_valid.min() < per_img  # padding exercised
    parity_report[f"detection postprocess boxes (px), {case}"] = box_error
    parity_report[f"detection postprocess scores, {case}"] = score_error
    assert box_error < 1e-3 and score_error < 1e-6

    original = np.array([[480, 640], [333, 500]])
    rescaled = np.asarray(det.rescale_detections(ours, sizes, original).boxes)
    for i in range(n):
        boxes = torch.from_numpy(ours.boxes[i].copy())
        expected_boxes = tv_resize_boxes(boxes, list(image_size), list(original[i])).numpy()
        np.testing.assert_array_equal(rescaled[i], expected_boxes)


# ---------------------------------------------------------------------------------------- matching, loss

@jax.jit
def _jit_loss_and_grads(regression, logits, anchors, gt_boxes, gt_labels, gt_valid):
    matched = det.match_anchors(gt_boxes, gt_valid, anchors)

    def total(regression, logits):
        losses = det.ssd_loss(regression, logits, anchors, gt_boxes, gt_labels, gt_valid, matched)
        return losses["bbox_regression"] + losses["classification"], losses

    grads, losses = jax.grad(total, argnums=(0, 1), has_aux=True)(regression, logits)
    return matched, losses, grads


def test_matching_and_loss_match_torchvision(parity_report):
    rng = np.random.default_rng(4)
    anchors = det.ssdlite_anchors((320, 320))
    n, a, c, m = 3, len(anchors), 5, 6
    counts = [3, 6, 0]  # the last image has no ground truth
    gt_boxes = random_boxes(rng, (n, m), 0, 250, 15, 140)
    gt_boxes = np.minimum(gt_boxes, 320)
    gt_boxes[1, 5] = gt_boxes[1, 4]  # duplicates claim the same anchor: the later one gets it
    gt_labels = rng.integers(1, c, (n, m)).astype(np.int32)
    gt_valid = np.arange(m)[None] < np.array(counts)[:, None]
    gt_boxes[~gt_valid] = 0.0  # padding
    regression = rng.normal(0, 1.0, (n, a, 4)).astype(np.float32)
    logits = rng.normal(0, 2.0, (n, a, c)).astype(np.float32)

    matched, losses, grads = jax.tree.map(np.asarray, _jit_loss_and_grads(regression, logits, anchors, gt_boxes,
                                                                          gt_labels, gt_valid))

    targets, expected_matched = [], []
    anchors_t = torch.from_numpy(anchors)
    matcher = det_utils.SSDMatcher(0.5)
    for i in range(n):
        boxes = torch.from_numpy(gt_boxes[i, :counts[i]])
        targets.append({"boxes": boxes, "labels": torch.from_numpy(gt_labels[i, :counts[i]]).long()})
        if counts[i] == 0:
            expected_matched.append(torch.full((a,), -1, dtype=torch.int64))
        else:
            expected_matched.append(matcher(tv_box_ops.box_iou(boxes, anchors_t)))
    np.testing.assert_array_equal(matched, torch.stack(expected_matched).numpy())
    assert (matched >= 0).sum() > 10

    regression_t = torch.from_numpy(regression).requires_grad_()
    logits_t = torch.from_numpy(logits).requires_grad_()
    expected = tv_ssd.SSD.compute_loss(tv_self(neg_to_pos_ratio=3.0), targets,
                                       {"bbox_regression": regression_t, "cls_logits": logits_t},
                                       [anchors_t] * n, expected_matched)
    (expected["bbox_regression"] + expected["classification"]).backward()
    for key in ("bbox_regression", "classification"):
        relative = abs(float(losses[key]) - expected[key].item()) / expected[key].item()
        parity_report[f"detection loss {key} (relative)"] = relative
        assert relative < 1e-5, key
    for name, ours, theirs in (("bbox_regression", grads[0], regression_t.grad),
                               ("cls_logits", grads[1], logits_t.grad)):
        error = max_diff(ours, theirs.numpy())
        parity_report[f"detection loss grad {name}"] = error
        assert error < 1e-6, name
