"""flax_mobilenet.training.box_ap against ultralytics 8.4.190's own DetectionValidator / metrics (SPEC section 6).

The tests marked torch drive ultralytics itself: `DetectionValidator.update_metrics` (with `_process_batch`,
`match_predictions` and `DetMetrics.update_stats`) on hand-built NMS-style outputs and label batches, then
`DetMetrics.process` (`ap_per_class`). They require bit-equal mAP50, mAP50-95, P, R and fitness. The other tests
check the accumulator's own plumbing (padding, masks, multi-host rows) and closed-form cases.
"""
from __future__ import annotations

import numpy as np
import pytest

from flax_mobilenet.training import box_ap
from flax_mobilenet.training.box_ap import BoxAP, concatenate_box_ap_rows

H, W = 320, 480  # network input (rows, columns): H != W catches a swapped scale
NC = 4  # classes 0..NC-1 have ground truth; class NC appears only in predictions
KEYS = ("precision", "recall", "map50", "map", "fitness")


# ------------------------------------------------------------------------------------------------ data
def _random_gt(rng, n_images):
    """Per image: ground-truth pixel xyxy (float32) and classes; about 1 in 6 images has none."""
    images = []
    for _ in range(n_images):
        g = 0 if rng.random() < 0.17 else int(rng.integers(1, 9))
        wh = rng.uniform(8, 160, (g, 2))
        xy = rng.uniform(0, 1, (g, 2)) * (np.array([W, H]) - wh)
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        images.append((boxes, rng.integers(0, NC, g)))
    return images


def _random_preds(rng, gt_boxes, gt_classes, tie_step=None):
    """NMS-like detections: jittered copies of the ground truth (some with the wrong class, some duplicated) plus
    false positives, some of class NC that has no ground truth. Some images have none. Sorted by decreasing score
    (stable), as NMS returns them. tie_step quantizes the scores, which forces ties."""
    if rng.random() < 0.15:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    boxes, classes = [], []
    for b, c in zip(gt_boxes, gt_classes):
        if rng.random() < 0.8:
            for _ in range(1 + int(rng.random() < 0.3)):
                size = np.tile(b[2:] - b[:2], 2)
                boxes.append(b + rng.normal(0, 0.08, 4) * size)
                classes.append(c if rng.random() < 0.9 else rng.integers(0, NC + 1))
    for _ in range(int(rng.integers(0, 6))):
        wh = rng.uniform(8, 160, 2)
        xy = rng.uniform(0, 1, 2) * (np.array([W, H]) - wh)
        boxes.append(np.concatenate([xy, xy + wh]))
        classes.append(rng.integers(0, NC + 1))
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.int64)
    scores = rng.uniform(0.001, 1.0, len(boxes)).astype(np.float32)
    if tie_step:
        scores = (np.ceil(scores / tie_step) * tie_step).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], classes[order]


def _dataset(seed, n_images=20, tie_step=None):
    rng = np.random.default_rng(seed)
    gts = _random_gt(rng, n_images)
    return [(gb, gc, *_random_preds(rng, gb, gc, tie_step)) for gb, gc in gts]


def _ours(data):
    ap = BoxAP()
    for gb, gc, pb, ps, pc in data:
        ap.add_image(pb, ps, pc, gb, gc)
    return ap.result()


# ------------------------------------------------------------------------------------------------ ultralytics
@pytest.fixture(scope="module")
def ult():
    import yolo_reference  # noqa: F401  (first: the torchvision stub, offline settings)
    import torch
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.models.yolo.detect.val import DetectionValidator
    from ultralytics.utils import ops
    from ultralytics.utils.metrics import DetMetrics, ap_per_class, box_iou, compute_ap
    return dict(torch=torch, BaseValidator=BaseValidator, DetectionValidator=DetectionValidator, ops=ops,
                DetMetrics=DetMetrics, ap_per_class=ap_per_class, box_iou=box_iou, compute_ap=compute_ap)


def _ultralytics_gt(ult, gt_boxes):
    """Our pixel boxes after the trip through ultralytics' label format: normalized xywh float32 as in a batch,
    then back to pixels by its `_prepare_batch` arithmetic. Returns (batch bboxes, pixel xyxy both sides see)."""
    torch, ops = ult["torch"], ult["ops"]
    b = gt_boxes.astype(np.float32)
    xywh = np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1) / np.array([W, H, W, H], np.float32)
    xywh = torch.from_numpy(xywh.astype(np.float32))
    pixels = ops.xywh2xyxy(xywh) * torch.tensor((H, W))[[1, 0, 1, 0]] if len(b) else xywh
    return xywh, pixels.numpy()


def _ultralytics_metrics(ult, tmp_path, data, batch_size=4):
    """Runs DetectionValidator.update_metrics batch by batch, then DetMetrics.process. Returns
    (our-format results, the ground truth in pixels exactly as ultralytics saw it)."""
    torch = ult["torch"]
    v = ult["DetectionValidator"](save_dir=tmp_path, args={"plots": False, "save_json": False, "save_txt": False})
    v.seen, v.is_custom_json, v.build_gdict = 0, False, False
    v.metrics = ult["DetMetrics"](names={i: str(i) for i in range(NC + 1)})
    seen_gt = []
    for start in range(0, len(data), batch_size):
        chunk = data[start:start + batch_size]
        idx, cls, bboxes, preds = [], [], [], []
        for k, (gb, gc, pb, ps, pc) in enumerate(chunk):
            xywh, pixels = _ultralytics_gt(ult, gb)
            seen_gt.append(pixels)
            idx.append(np.full(len(gb), k, np.float32))
            cls.append(np.asarray(gc, np.float32))
            bboxes.append(xywh.numpy())
            preds.append({"bboxes": torch.from_numpy(pb), "conf": torch.from_numpy(ps),
                          "cls": torch.from_numpy(pc.astype(np.float32))})
        batch = {"batch_idx": torch.from_numpy(np.concatenate(idx)),
                 "cls": torch.from_numpy(np.concatenate(cls))[:, None],
                 "bboxes": torch.from_numpy(np.concatenate(bboxes).reshape(-1, 4)),
                 "ori_shape": [(H, W)] * len(chunk), "ratio_pad": [None] * len(chunk),
                 "img": torch.empty((len(chunk), 3, H, W)),
                 "im_file": [f"im{start + k}.jpg" for k in range(len(chunk))]}
        v.update_metrics(preds, batch)
    v.metrics.process()
    mp, mr, map50, map_ = v.metrics.mean_results()
    out = {"precision": mp, "recall": mr, "map50": map50, "map": map_, "fitness": v.metrics.fitness}
    return {k: float(x) for k, x in out.items()}, seen_gt


def _with_gt(data, gt_pixels):
    return [(g, gc, pb, ps, pc) for (_, gc, pb, ps, pc), g in zip(data, gt_pixels)]


@pytest.mark.torch
@pytest.mark.parametrize("seed,tie_step", [(0, None), (1, None), (2, None), (3, None), (4, 0.05), (5, 0.1)])
def test_matches_detection_validator(ult, tmp_path, seed, tie_step):
    data = _dataset(seed, tie_step=tie_step)
    theirs, gt_pixels = _ultralytics_metrics(ult, tmp_path, data)
    ours = _ours(_with_gt(data, gt_pixels))
    assert 0.05 < theirs["map"] < theirs["map50"] < 0.99  # a non-trivial case
    assert ours == theirs  # bit-equal


@pytest.mark.torch
def test_raw_pieces_match(ult):
    """box_iou, match_predictions, compute_ap and ap_per_class one by one against ultralytics' functions."""
    torch = ult["torch"]
    assert np.array_equal(box_ap.IOU_THRESHOLDS, torch.linspace(0.5, 0.95, 10).numpy())
    holder = type("Holder", (), {"iouv": torch.linspace(0.5, 0.95, 10)})()
    data = _dataset(11, n_images=30, tie_step=0.05)
    tps, confs, clss, targets = [], [], [], []
    for gb, gc, pb, ps, pc in data:
        if len(gb) and len(pb):
            iou_t = ult["box_iou"](torch.from_numpy(gb), torch.from_numpy(pb))
            iou = box_ap.box_iou(gb, pb)
            assert iou.dtype == np.float32 and np.array_equal(iou, iou_t.numpy())
            ref = ult["BaseValidator"].match_predictions(
                holder, torch.from_numpy(pc.astype(np.float32)), torch.from_numpy(gc.astype(np.float32)), iou_t)
            tp = box_ap.match_predictions(pc, gc, iou)
            assert np.array_equal(tp, ref.numpy())
        tp, conf, cls = box_ap.image_stats(pb, ps, pc, gb, gc)
        tps.append(tp), confs.append(conf), clss.append(cls), targets.append(gc)
    tp, conf, cls, target = (np.concatenate(x) for x in (tps, confs, clss, targets))
    ref = ult["ap_per_class"](tp, conf, cls.astype(np.float32), target.astype(np.float32))
    ours = box_ap.ap_per_class(tp, conf, cls, target)
    for mine, theirs in ((ours.p, ref[2]), (ours.r, ref[3]), (ours.f1, ref[4]), (ours.ap, ref[5]),
                         (ours.classes, ref[6])):
        assert np.array_equal(mine, theirs)
    rng = np.random.default_rng(0)
    for n in (0, 1, 7):
        recall, precision = np.sort(rng.random(n)), rng.random(n)
        mine, theirs = box_ap.compute_ap(recall, precision), ult["compute_ap"](recall, precision)
        assert mine[0] == theirs[0] and all(np.array_equal(a, b) for a, b in zip(mine[1:], theirs[1:]))


@pytest.mark.torch
@pytest.mark.parametrize("case", ["perfect", "wrong_class", "no_predictions", "no_labels"])
def test_corner_cases_match(ult, tmp_path, case):
    data = _dataset(7)
    if case == "perfect":  # every ground truth predicted exactly, nothing else
        data = [(gb, gc, gb, np.linspace(0.9, 0.1, len(gb)).astype(np.float32), gc) for gb, gc, *_ in data]
    elif case == "wrong_class":
        data = [(gb, gc, gb, np.linspace(0.9, 0.1, len(gb)).astype(np.float32), (gc + 1) % NC)
                for gb, gc, *_ in data]
    elif case == "no_predictions":
        data = [(gb, gc, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int))
                for gb, gc, *_ in data]
    else:
        data = [(np.zeros((0, 4), np.float32), np.zeros(0, int), pb, ps, pc) for _, _, pb, ps, pc in data]
    theirs, gt_pixels = _ultralytics_metrics(ult, tmp_path, data)
    ours = _ours(_with_gt(data, gt_pixels))
    assert ours == theirs
    # perfect is 0.995, not 1: at recall 1 np.interp takes the sentinel's precision 0 (the recall array ends with
    # recall[-1], 1.0, 1.0), so the last 0.01-wide trapezoid counts half
    expected = 0.995 if case == "perfect" else 0.0
    for key in ("map50", "map", "fitness"):
        assert ours[key] == pytest.approx(expected, abs=1e-12)


@pytest.mark.torch
def test_close_to_coco_api(ult, tmp_path):
    """pycocotools on the same data gives a similar but not equal mAP (different matching, 100-det cap, ...)."""
    from flax_mobilenet.training.evaluation import CocoDetectionEvaluator
    data = _dataset(3, n_images=40)
    theirs, gt_pixels = _ultralytics_metrics(ult, tmp_path, data)
    data = _with_gt(data, gt_pixels)
    coco = CocoDetectionEvaluator()
    for gb, gc, pb, ps, pc in data:  # category ids start at 1 for COCO
        coco.add_batch((pb[None], ps[None], pc[None] + 1, np.array([len(pb)])), gt_boxes=gb.reshape(1, -1, 4),
                       gt_labels=(gc + 1).reshape(1, -1))
    result = coco.evaluate()
    ours = _ours(data)
    assert ours == theirs
    assert abs(result["AP"] - ours["map"]) < 0.03 and abs(result["AP50"] - ours["map50"]) < 0.03


# ------------------------------------------------------------------------------------------------ plumbing
def _padded_batches(data, rng, batch_size=6, d=16, m=12):
    """The data as padded batches: detections scattered into random slots (relative order kept), random padding
    ground truths, and padding images (mask False) holding junk."""
    batches = []
    for start in range(0, len(data), batch_size):
        chunk = list(data[start:start + batch_size])
        n = len(chunk) + 2
        real = np.zeros(n, bool)
        real[rng.choice(n, len(chunk), replace=False)] = True
        db, ds = rng.uniform(0, 100, (n, d, 4)).astype(np.float32), rng.random((n, d)).astype(np.float32)
        dl, dv = rng.integers(0, NC + 1, (n, d)), np.zeros((n, d), bool)
        gb, gl = rng.uniform(0, 100, (n, m, 4)).astype(np.float32), rng.integers(0, NC, (n, m))
        gv = np.zeros((n, m), bool)
        for row, (g, gc, pb, ps, pc) in zip(np.flatnonzero(real), chunk):
            slots = np.sort(rng.choice(d, len(pb), replace=False))
            db[row, slots], ds[row, slots], dl[row, slots], dv[row, slots] = pb, ps, pc, True
            gslots = rng.choice(m, len(g), replace=False)
            gb[row, gslots], gl[row, gslots], gv[row, gslots] = g, gc, True
        dv[~real] = rng.random((int((~real).sum()), d)) < 0.5
        gv[~real] = True
        batches.append((db, ds, dl, dv, gb, gl, gv, real))
    return batches


def test_add_batch_and_multihost_rows_equal_add_image():
    data = _dataset(21, n_images=23, tie_step=0.05)
    expected = _ours(data)
    rng = np.random.default_rng(0)
    batches = _padded_batches(data, rng)
    single = BoxAP()
    for db, ds, dl, dv, gb, gl, gv, real in batches:
        single.add_batch(db, ds, dl, dv, gb, gl, gv, mask=real)
    assert single.result() == expected
    # two "hosts" taking alternate batches in order, gathered in process order with padding rows appended
    hosts = [BoxAP(), BoxAP()]
    for k, (db, ds, dl, dv, gb, gl, gv, real) in enumerate(batches):
        hosts[0 if k < 2 else 1].add_batch(db, ds, dl, dv, gb, gl, gv, mask=real)
    local = [h.local_arrays() for h in hosts]
    assert set(local[0]) == set(box_ap.BOX_AP_FIELDS)
    pad = {k: np.zeros((3, *v.shape[1:]), v.dtype) for k, v in local[1].items()}
    pad["det_scores"][:] = 0.5
    pad["num_valid"][:] = 1  # junk in padding rows: ignored because mask is False
    gathered = concatenate_box_ap_rows([local[0], local[1], pad])
    assert BoxAP.from_arrays(gathered).result() == expected
    assert BoxAP().compute(gathered) == expected


def test_num_valid_counts_and_jax_arrays():
    import jax.numpy as jnp
    data = _dataset(5, n_images=8)
    d = max(len(x[2]) for x in data) + 2
    m = max(len(x[0]) for x in data) + 1
    n = len(data)
    db, ds, dl = np.zeros((n, d, 4), np.float32), np.zeros((n, d), np.float32), np.zeros((n, d), np.int32)
    gb, gl, gv = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int32), np.zeros((n, m), bool)
    nv = np.zeros(n, np.int32)
    for i, (g, gc, pb, ps, pc) in enumerate(data):
        k = len(pb)
        db[i, :k], ds[i, :k], dl[i, :k], nv[i] = pb, ps, pc, k
        gb[i, :len(g)], gl[i, :len(g)], gv[i, :len(g)] = g, gc, True
    ap = BoxAP()
    ap.add_batch(*(jnp.asarray(x) for x in (db, ds, dl, nv, gb, gl, gv)))
    assert ap.result() == _ours(data)


def test_closed_form_cases():
    zeros = dict.fromkeys(KEYS, 0.0)
    assert BoxAP().result() == zeros  # nothing added
    box = np.array([[10, 10, 50, 60]], np.float32)
    ap = BoxAP()
    ap.add_image(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), box, [2])
    assert ap.result() == zeros  # ground truth, no predictions
    ap = BoxAP()
    ap.add_image(box, [0.9], [2], np.zeros((0, 4)), [])
    assert ap.result() == zeros  # predictions, no ground truth
    ap = BoxAP()
    ap.add_image(box, [0.9], [2], box, [2])
    ap.add_image(box + 1000, [0.8], [3], box, [3])  # a miss in class 3
    ap.add_image(box, [0.7], [9], np.zeros((0, 4)), [])  # class without ground truth: ignored
    r = ap.result()
    assert r["map50"] == pytest.approx(0.995 / 2, abs=1e-12)  # 0.995 (see above) and 0 averaged
    assert r["map"] == r["fitness"] == pytest.approx(r["map50"], abs=1e-12)
    # IoU exactly at / just below the thresholds: 0.5 counts at IoU 0.5 only; 0.75 counts up to 0.75
    gt = np.array([[0, 0, 100, 100]], np.float32)
    for x2, n_hit in ((50, 1), (75, 6), (74, 5)):
        tp, _, _ = box_ap.image_stats(np.array([[0, 0, x2, 100]], np.float32), [1.0], [0], gt, [0])
        assert tp.sum() == n_hit, (x2, tp)
