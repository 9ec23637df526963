"""flax_mobilenet.training.evaluation: COCO box mAP through pycocotools, confusion-matrix mIoU as torchvision's."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_mobilenet.training import evaluation
from flax_mobilenet.training.evaluation import (ConfusionMatrix, CocoDetectionEvaluator, concatenate_rows,
                                                confusion_matrix, confusion_update, reduce_confusion_matrix,
                                                segmentation_metrics)

A = [10.0, 10.0, 60.0, 60.0]      # 50 x 50: medium
B = [100.0, 100.0, 150.0, 150.0]  # 50 x 50: medium
SMALL = [0.0, 0.0, 20.0, 20.0]    # 400 < 32**2
LARGE = [0.0, 100.0, 200.0, 300.0]  # 40000 > 96**2
PAD = [0.0, 0.0, 0.0, 0.0]


def _dets(rows, d=None):
    """rows: per image a list of (box, score, label) -> padded arrays (N, D, ...) and num_valid."""
    d = d or max(1, max(len(r) for r in rows))
    boxes = np.zeros((len(rows), d, 4), np.float32)
    scores = np.zeros((len(rows), d), np.float32)
    labels = np.zeros((len(rows), d), np.int32)
    for i, r in enumerate(rows):
        for j, (box, score, label) in enumerate(r):
            boxes[i, j], scores[i, j], labels[i, j] = box, score, label
    return {"boxes": boxes, "scores": scores, "labels": labels, "num_valid": np.array([len(r) for r in rows])}


def _gts(rows, m=None):
    """rows: per image a list of (box, label) -> gt_boxes (N, M, 4), gt_labels (N, M), gt_valid (N, M)."""
    m = m or max(1, max(len(r) for r in rows))
    boxes = np.zeros((len(rows), m, 4), np.float32)
    labels = np.zeros((len(rows), m), np.int32)
    valid = np.zeros((len(rows), m), bool)
    for i, r in enumerate(rows):
        for j, (box, label) in enumerate(r):
            boxes[i, j], labels[i, j], valid[i, j] = box, label, True
    return {"gt_boxes": boxes, "gt_labels": labels, "gt_valid": valid}


def _evaluate(det_rows, gt_rows, **kwargs):
    evaluator = CocoDetectionEvaluator()
    evaluator.add_batch(_dets(det_rows), **_gts(gt_rows), **kwargs)
    return evaluator.evaluate()


# 101-point interpolated AP of a precision/recall curve that is 1 up to recall 0.5 and 0 after: recall thresholds
# 0.00 .. 0.50 (51 of 101) have precision 1.
HALF_RECALL_AP = 51 / 101


def test_perfect_detections_give_ap_one_in_every_area_range():
    gts = [[(A, 1), (SMALL, 2)], [(LARGE, 1), (B, 3)]]
    dets = [[(box, 0.9 - 0.1 * k, label) for k, (box, label) in enumerate(r)] for r in gts]
    result = _evaluate(dets, gts)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert result[key] == pytest.approx(1.0), key
    assert set(result) == set(evaluation.COCO_STAT_NAMES)
    assert all(isinstance(v, float) for v in result.values())


def test_one_of_two_boxes_found_gives_51_of_101():
    result = _evaluate([[(A, 0.9, 1)]], [[(A, 1), (B, 1)]])
    for key in ("AP", "AP50", "AP75", "APm"):
        assert result[key] == pytest.approx(HALF_RECALL_AP), key
    assert result["AR100"] == pytest.approx(0.5)
    assert result["APs"] == result["APl"] == -1.0  # no ground truth in those area ranges: pycocotools' -1


def test_duplicate_detection_lowers_ap():
    # scores: A (TP), A again (FP: A is taken), B (TP). precision [1, 1/2, 2/3] -> envelope [1, 2/3, 2/3] at recall
    # [.5, .5, 1]: recall thresholds 0 .. .50 (51) get 1, .51 .. 1.00 (50) get 2/3.
    result = _evaluate([[(A, 0.9, 1), (A, 0.8, 1), (B, 0.7, 1)]], [[(A, 1), (B, 1)]])
    assert result["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert result["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    # the same duplicate scored below every true positive costs nothing
    assert _evaluate([[(A, 0.9, 1), (B, 0.8, 1), (A, 0.7, 1)]], [[(A, 1), (B, 1)]])["AP"] == pytest.approx(1.0)


def test_iou_062_counts_at_050_not_at_075():
    # IoU 6200 / 10000 = 0.62: a true positive at thresholds .50 .55 .60, a miss at .65 .. .95 -> AP = 3/10
    result = _evaluate([[([0.0, 0.0, 100.0, 62.0], 0.9, 1)]], [[([0.0, 0.0, 100.0, 100.0], 1)]])
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["AP"] == pytest.approx(0.3)
    assert result["APl"] == pytest.approx(0.3)


def test_wrong_class_is_a_false_positive_and_a_miss():
    result = _evaluate([[(A, 0.9, 2), (B, 0.8, 1)]], [[(A, 1), (B, 1)]])
    assert result["AP"] == pytest.approx(HALF_RECALL_AP)  # category 2 has no ground truth: not averaged


def test_padding_invalid_entries_and_batch_mask_are_ignored():
    dets = _dets([[(A, 0.9, 1)], [(A, 0.9, 1), (B, 0.8, 1)], [(A, 0.9, 1)]], d=3)
    dets["boxes"][0, 1:] = B  # beyond num_valid: would find B (AP 1.0) if counted
    dets["labels"][0, 1:] = 1
    dets["scores"][0, 1:] = 0.95
    gts = _gts([[(A, 1), (B, 1)], [(A, 1), (B, 1)], [(B, 1)]], m=3)
    gts["gt_boxes"][0, 2] = [300, 300, 350, 350]  # gt_valid False: would be missed if counted
    gts["gt_labels"][0, 2] = 1
    # row 1 is padding (mask 0): perfect detections, row 2 is real: a false positive on a missed box
    evaluator = CocoDetectionEvaluator()
    evaluator.add_batch(dets, **gts, mask=np.array([1.0, 0.0, 0.0]))
    assert evaluator.evaluate()["AP"] == pytest.approx(HALF_RECALL_AP)
    evaluator.reset()
    evaluator.add_batch(dets, **gts, mask=np.array([1.0, 1.0, 0.0]))  # two real images: 3 of 4 boxes
    assert evaluator.evaluate()["AP"] > HALF_RECALL_AP


def test_no_detections_give_zero_and_nothing_is_printed(capsys):
    result = _evaluate([[]], [[(A, 1)]])
    assert result["AP"] == 0.0 and result["AR100"] == 0.0
    assert capsys.readouterr().out == ""


def _random_case(rng, num_images, num_classes=3):
    det_rows, gt_rows = [], []
    for _ in range(num_images):
        gt = []
        for _ in range(rng.integers(0, 5)):
            xy = rng.uniform(0, 200, 2)
            wh = rng.uniform(5, 120, 2)
            gt.append((list(np.concatenate([xy, xy + wh])), int(rng.integers(1, num_classes + 1))))
        det = []
        for box, label in gt:
            if rng.random() < 0.8:
                jitter = rng.normal(0, 6, 4)
                det.append((list(np.asarray(box) + jitter), float(rng.random()), label))
        for _ in range(rng.integers(0, 3)):
            xy = rng.uniform(0, 200, 2)
            det.append((list(np.concatenate([xy, xy + rng.uniform(5, 80, 2)])), float(rng.random()),
                        int(rng.integers(1, num_classes + 1))))
        det_rows.append(det)
        gt_rows.append(gt)
    return det_rows, gt_rows


def test_batches_accumulate_like_one_batch_and_hosts_merge():
    rng = np.random.default_rng(0)
    det_rows, gt_rows = _random_case(rng, 12)
    whole = CocoDetectionEvaluator()
    whole.add_batch(_dets(det_rows), **_gts(gt_rows))
    expected = whole.evaluate()
    assert 0.1 < expected["AP"] < 0.95

    # batches of 4 with different detection / gt widths, plus a padding row per batch
    hosts = [CocoDetectionEvaluator(), CocoDetectionEvaluator()]
    for b, start in enumerate(range(0, 12, 4)):
        dets = _dets(det_rows[start:start + 4] + [[(A, 0.99, 1)]], d=8 + b)
        gts = _gts(gt_rows[start:start + 4] + [[(B, 1)]], m=5 + 2 * b)
        hosts[b % 2].add_batch(dets, **gts, mask=np.array([1, 1, 1, 1, 0]))
    # what `evaluate` gathers from two hosts: their rows concatenated in process order (image ids follow it)
    merged = concatenate_rows([hosts[0].local_arrays(), hosts[1].local_arrays()])
    order = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7]
    reordered = CocoDetectionEvaluator()
    reordered.add_batch(_dets([det_rows[i] for i in order]), **_gts([gt_rows[i] for i in order]))
    assert hosts[0].compute(merged) == pytest.approx(reordered.evaluate())
    assert reordered.evaluate() == pytest.approx(expected)  # image order does not matter

    single = CocoDetectionEvaluator()
    for start in range(0, 12, 4):
        single.add_batch(_dets(det_rows[start:start + 4], d=10), **_gts(gt_rows[start:start + 4], m=7))
    assert single.evaluate() == pytest.approx(expected)


def test_two_host_gather_path(monkeypatch):
    """`evaluate` with two processes, faked: every collective returns what two hosts holding the same rows (padded
    to each other's shapes) would exchange."""
    from jax.experimental import multihost_utils

    def allgather(tree, tiled=False):
        return jax.tree.map(lambda x: np.concatenate([x, x]) if tiled else np.stack([x, x]), tree)

    calls = []
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: calls.append(x) or x)
    evaluator = CocoDetectionEvaluator()
    evaluator.add_batch(_dets([[(A, 0.9, 1)], [(B, 0.5, 1)]]), **_gts([[(A, 1), (B, 1)], []]),
                        mask=np.array([1, 0]))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    result = evaluator.evaluate()
    monkeypatch.undo()
    assert len(calls) == 1
    assert result["AP"] == pytest.approx(HALF_RECALL_AP, rel=1e-6)  # float32 broadcast
    assert evaluator.coco_eval.params.imgIds == [1, 2]  # 2 hosts x 2 rows; the padding rows are dropped


def test_coco_annotations_file_dict_or_object(tmp_path):
    COCO = evaluation._coco_api()[0]  # pycocotools' COCO

    # COCO ids: image ids 42 and 7, categories 1 and 90 (gaps), a crowd region, float areas from "masks"
    dataset = {
        "images": [{"id": 42, "height": 300, "width": 400}, {"id": 7, "height": 300, "width": 400},
                   {"id": 99, "height": 300, "width": 400}],  # 99 is not evaluated
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2000.0, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 90, "bbox": [100, 100, 50, 50], "area": 2100.0, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 90, "bbox": [0, 100, 200, 200], "area": 30000.0, "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [250, 20, 40, 60], "area": 2300.0, "iscrowd": 0},
            {"id": 5, "image_id": 99, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500.0, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(dataset))
    dets = _dets([[(A, 0.9, 1), (B, 0.3, 1), ([110, 100, 160, 150], 0.8, 90)],
                  [([10, 110, 60, 160], 0.7, 90), ([250, 25, 290, 80], 0.6, 1)],
                  [(A, 0.99, 1)]])
    ids = np.array([42, 7, -1])
    mask = np.array([1, 1, 0])

    results = []
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))
    coco.createIndex()
    for source in (str(path), path, dataset, coco):
        evaluator = CocoDetectionEvaluator(source)
        evaluator.add_batch(dets, image_ids=ids, mask=mask)
        results.append(evaluator.evaluate())
        assert "Average Precision" in evaluator.summary
        assert evaluator.coco_eval.params.imgIds == [7, 42]
    for other in results[1:]:
        assert other == results[0]

    # the same ground truth given as arrays (crowd flag and areas included) gives the same numbers
    gts = _gts([[([10, 10, 60, 60], 1), ([100, 100, 150, 150], 90)],
                [([0, 100, 200, 300], 90), ([250, 20, 290, 80], 1)], []], m=2)
    from_arrays = CocoDetectionEvaluator()
    from_arrays.add_batch(dets, **gts, gt_iscrowd=np.array([[0, 0], [1, 0], [0, 0]]),
                          gt_area=np.array([[2000, 2100], [30000, 2300], [0, 0]]), image_ids=ids, mask=mask,
                          image_sizes=np.full((3, 2), 300))
    assert from_arrays.evaluate() == pytest.approx(results[0])
    assert 0 < results[0]["AP"] < 1

    with pytest.raises(ValueError, match="image_ids"):
        CocoDetectionEvaluator(dataset).add_batch(dets)


def test_jax_arrays_and_detections_tuple():
    from flax_mobilenet.detection.postprocess import Detections

    d = _dets([[(A, 0.9, 1)]])
    dets = Detections(*(jnp.asarray(d[k]) for k in ("boxes", "scores", "labels", "num_valid")))
    evaluator = CocoDetectionEvaluator()
    evaluator.add_batch(dets, **{k: jnp.asarray(v) for k, v in _gts([[(A, 1), (B, 1)]]).items()},
                        mask=jnp.ones((1,)))
    assert evaluator.evaluate()["AP"] == pytest.approx(HALF_RECALL_AP)


# ================================================================================================ segmentation
def _numpy_confusion(preds, targets, n, valid=None):
    if valid is not None:
        valid = np.broadcast_to(valid, np.shape(targets)).ravel()
    preds, targets = np.asarray(preds).ravel(), np.asarray(targets).ravel()
    keep = (targets >= 0) & (targets < n)
    if valid is not None:
        keep &= valid
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (targets[keep], preds[keep]), 1)
    return cm


def test_tiny_hand_case():
    targets = np.array([[[0, 0, 1], [1, 2, 255]]])
    preds = np.array([[[0, 1, 1], [1, 1, 2]]])
    cm = confusion_matrix(preds, targets, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    metrics = segmentation_metrics(cm)
    # IoU: class 0: 1 / (2 + 1 - 1); class 1: 2 / (2 + 4 - 2); class 2: 0 / (1 + 0 - 0)
    assert metrics["per_class_iou"] == pytest.approx([0.5, 0.5, 0.0])
    assert metrics["mIoU"] == pytest.approx(1 / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 5)
    assert metrics["per_class_accuracy"] == pytest.approx([0.5, 1.0, 0.0])

    # a 4th class in neither targets nor predictions: IoU NaN, and torchvision's iu.mean() is NaN
    metrics = segmentation_metrics(confusion_matrix(preds, targets, 4))
    assert np.isnan(metrics["per_class_iou"][3]) and np.isnan(metrics["mIoU"])
    assert metrics["mIoU_present"] == pytest.approx(1 / 3)
    # only predicted, never a target: IoU 0, and it counts
    only_predicted = preds.copy()
    only_predicted[0, 0, 1] = 3  # target 0
    metrics = segmentation_metrics(confusion_matrix(only_predicted, targets, 4))
    assert metrics["per_class_iou"][3] == 0.0 and not np.isnan(metrics["mIoU"])


def test_random_against_numpy_with_logits_ignore_and_mask():
    rng = np.random.default_rng(1)
    n = 6
    targets = rng.integers(0, n, (4, 9, 11))
    targets[rng.random(targets.shape) < 0.2] = 255
    targets[0, 0, :3] = [n, 17, -1]  # other out-of-range labels: ignored too (torchvision's rule)
    logits = rng.normal(size=targets.shape + (n,)).astype(np.float32)
    preds = logits.argmax(-1)
    mask = np.array([1.0, 0.0, 1.0, 1.0])
    got = confusion_matrix(logits, targets, n, mask=mask)
    np.testing.assert_array_equal(got, _numpy_confusion(preds, targets, n, valid=(mask > 0)[:, None, None]))
    np.testing.assert_array_equal(confusion_matrix(preds, targets, n), _numpy_confusion(preds, targets, n))
    # an ignore_index inside [0, n) is dropped as well
    np.testing.assert_array_equal(confusion_matrix(preds, targets, n, ignore_index=0),
                                  _numpy_confusion(preds, targets, n, valid=targets != 0))


@pytest.mark.torch
def test_matches_torchvision_confusion_matrix():
    import torch

    class TorchvisionConfusionMatrix:  # references/segmentation/utils.py
        def __init__(self, num_classes):
            self.num_classes, self.mat = num_classes, None

        def update(self, a, b):
            n = self.num_classes
            if self.mat is None:
                self.mat = torch.zeros((n, n), dtype=torch.int64, device=a.device)
            with torch.inference_mode():
                k = (a >= 0) & (a < n)
                inds = n * a[k].to(torch.int64) + b[k]
                self.mat += torch.bincount(inds, minlength=n**2).reshape(n, n)

        def compute(self):
            h = self.mat.float()
            acc_global = torch.diag(h).sum() / h.sum()
            acc = torch.diag(h) / h.sum(1)
            iu = torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h))
            return acc_global, acc, iu

    rng = np.random.default_rng(2)
    n = 5
    reference = TorchvisionConfusionMatrix(n)
    ours = ConfusionMatrix(n)
    for _ in range(3):
        targets = rng.integers(0, n, (2, 16, 16))
        targets[rng.random(targets.shape) < 0.1] = 255
        logits = rng.normal(size=(2, 16, 16, n)).astype(np.float32)
        # torchvision: confmat.update(target.flatten(), output.argmax(1).flatten()) on NCHW logits
        reference.update(torch.from_numpy(targets).flatten(),
                         torch.from_numpy(logits).permute(0, 3, 1, 2).argmax(1).flatten())
        ours.update(logits, targets)
    np.testing.assert_array_equal(ours.mat, reference.mat.numpy())
    acc_global, acc, iu = reference.compute()
    metrics = ours.compute()
    assert metrics["pixel_accuracy"] == pytest.approx(acc_global.item(), rel=1e-6)
    assert metrics["per_class_accuracy"] == pytest.approx(acc.tolist(), rel=1e-6)
    assert metrics["per_class_iou"] == pytest.approx(iu.tolist(), rel=1e-6)
    assert metrics["mIoU"] == pytest.approx(iu.mean().item(), rel=1e-6)

    empty_class = TorchvisionConfusionMatrix(n + 1)
    empty_class.update(torch.from_numpy(targets).flatten(), torch.from_numpy(logits).argmax(-1).flatten())
    assert np.isnan(empty_class.compute()[2].mean().item())
    assert np.isnan(segmentation_metrics(confusion_matrix(logits, targets, n + 1))["mIoU"])


def test_jitted_accumulation_over_batches_equals_one_batch():
    rng = np.random.default_rng(3)
    n = 4
    targets = rng.integers(0, n, (6, 8, 8))
    targets[rng.random(targets.shape) < 0.15] = 255
    logits = rng.normal(size=(6, 8, 8, n)).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)  # the last example is padding

    traces = []

    @jax.jit
    def step(cm, logits, targets, mask):
        traces.append(1)
        return confusion_update(cm, logits, targets, n, 255, mask)

    cm = jnp.zeros((n, n), jnp.int32)
    for start in range(0, 6, 2):
        cm = step(cm, logits[start:start + 2], targets[start:start + 2], mask[start:start + 2])
    assert len(traces) == 1
    whole = confusion_update(jnp.zeros((n, n), jnp.int32), logits[:5], targets[:5], n)
    np.testing.assert_array_equal(cm, whole)
    assert cm.dtype == jnp.int32

    accumulator = ConfusionMatrix(n)
    for start in range(0, 6, 3):
        accumulator.update(logits[start:start + 3], targets[start:start + 3], mask=mask[start:start + 3])
    np.testing.assert_array_equal(accumulator.mat, whole)
    assert accumulator.mat.dtype == np.int64
    assert accumulator.compute() == segmentation_metrics(whole)
    np.testing.assert_array_equal(reduce_confusion_matrix(cm), whole)  # one process: the matrix itself
    accumulator.reset()
    assert accumulator.mat.sum() == 0
