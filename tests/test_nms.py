"""Every NMS solver keeps exactly what greedy NMS keeps: 'fixed_point' and 'blockwise' against 'greedy' and against
torchvision's `batched_nms` -- its CPU kernel transcribed in NumPy (test_detection.py's `reference_batched_nms`; the
CPU torch installed here cannot load torchvision's compiled op, tests/torch_reference.py).

Random problems cover crowded boxes (long suppression chains), exact duplicates, exact score ties, invalid entries,
K below one block, K just above a block multiple (padding), batch dimensions and labels; a chain in which every
box suppresses only the next is the worst case of the sweeps.  Then the detectors' `detect` (SSDLite, YOLOv8, random
weights, small inputs) gives the same detections with every method.  One compiled function per shape and method.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from torch_reference import torch  # noqa: F401  (first: the torchvision shim)
from test_dense_serving import random_variables
from test_detection import random_boxes, reference_batched_nms

from flax_mobilenet.detection import nms

SOLVERS = [m for m in nms.METHODS if m != "greedy"]


@functools.partial(jax.jit, static_argnames=("iou_threshold", "method"))
def _keep(boxes, scores, labels, valid, iou_threshold, method):
    return nms.batched_nms(boxes, scores, labels, valid, iou_threshold, method=method)


def random_problem(rng: np.random.Generator, shape: tuple[int, ...], classes: int):
    """Crowded boxes with exact duplicates, exact score ties and ~15% invalid entries."""
    k = shape[-1]
    boxes = random_boxes(rng, shape, 0, 3 * np.sqrt(k) + 10, 6, 40)
    scores = rng.uniform(0, 1, shape).astype(np.float32)
    if k >= 8:
        boxes[..., k // 2:k // 2 + k // 8, :] = boxes[..., :k // 8, :]  # IoU 1
        scores[..., k // 4:k // 4 + k // 8] = scores[..., -(k // 8):]  # ties: visited in index order
    labels = rng.integers(0, classes, shape).astype(np.int32)
    valid = rng.uniform(size=shape) < 0.85
    return boxes, scores, labels, valid


def expected_keep(boxes, scores, labels, valid, threshold, reference) -> np.ndarray:
    """The reference's keep mask, problem by problem (leading dimensions flattened), over the valid entries."""
    k = scores.shape[-1]
    keep = np.zeros((int(np.prod(scores.shape[:-1])), k), bool)
    for row, (b, s, c, v) in enumerate(zip(*(x.reshape(-1, k, *x.shape[len(scores.shape):])
                                              for x in (boxes, scores, labels, valid)))):
        members = np.nonzero(v)[0]
        keep[row, members[reference(b[members], s[members], c[members], threshold)]] = True
    return keep.reshape(scores.shape)


# shape (leading dims = batch), classes: one block, just over one and two blocks (padded), several blocks with labels
SHAPES = [((3, 7), 1), ((2, nms.BLOCK + 1), 1), ((2, 2 * nms.BLOCK + 1), 3), ((2, 2, 300), 4)]


@pytest.mark.parametrize("shape,classes", SHAPES, ids=[str(s) for s, _ in SHAPES])
def test_every_method_keeps_what_greedy_and_torchvision_keep(shape, classes):
    rng = np.random.default_rng(shape[-1])
    suppressed = 0
    for threshold in (0.5, 0.3):
        for _ in range(2):
            problem = random_problem(rng, shape, classes)
            want = expected_keep(*problem, threshold, reference_batched_nms)
            greedy = _keep(*problem, threshold, "greedy")
            np.testing.assert_array_equal(np.asarray(greedy.keep), want)
            for method in SOLVERS:
                got = _keep(*problem, threshold, method)
                for name, a, b in zip(got._fields, got, greedy):
                    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{method}: {name}")
            suppressed += int(problem[3].sum() - want.sum())
    assert suppressed > 0


@pytest.mark.parametrize("method", SOLVERS)
def test_longest_suppression_chain(method):
    """Box i overlaps boxes i - 1 and i + 1 only, scores decreasing: greedy keeps every other box, and the sweeps
    need one step per box (the fixed point's and each block's worst case)."""
    k = 2 * nms.BLOCK + 44
    x = np.arange(k, dtype=np.float32) * 6
    boxes = np.stack([x, np.zeros(k, np.float32), x + 10, np.full(k, 10, np.float32)], axis=-1)  # IoU 4/16 next door
    scores = np.linspace(1, 0.5, k, dtype=np.float32)
    problem = (boxes, scores, np.zeros(k, np.int32), np.ones(k, bool))
    keep = np.asarray(_keep(*problem, 0.2, method).keep)
    np.testing.assert_array_equal(keep, np.arange(k) % 2 == 0)
    np.testing.assert_array_equal(keep, np.asarray(_keep(*problem, 0.2, "greedy").keep))


def test_unknown_method_and_empty_problems():
    with pytest.raises(ValueError, match="unknown NMS method"):
        nms.greedy_keep(np.zeros((1, 4), np.float32), np.ones(1, bool), 0.5, "fast")
    empty = nms.greedy_keep(np.zeros((2, 0, 4), np.float32), np.ones((2, 0), bool), 0.5)
    assert empty.shape == (2, 0)


DETECTORS = {  # name: (input side, postprocessor options: YOLO's validation settings, so that NMS has work)
    "ssdlite320_mobilenet_v3_large": (128, {}),
    "yolov8n": (96, {"preset": "val"}),
}


@pytest.mark.parametrize("name", list(DETECTORS))
def test_detect_is_the_same_with_every_method(name):
    """`detect` with the default method and with 'greedy', and every method's post-processing of the same raw
    outputs: the same detections."""
    side, options = DETECTORS[name]
    model, variables = random_variables(name, side)
    images = np.random.default_rng(0).standard_normal((2, side, side, 3), dtype=np.float32)
    detect = jax.jit(functools.partial(model.detect, **options), static_argnames="nms_method")
    greedy = detect(variables, images, nms_method="greedy")
    assert np.asarray(greedy.num_valid).min() > 0
    outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    expected = jax.jit(model.postprocessor((side, side), **options, nms_method="greedy"))(outputs)
    runs = {"detect default": (greedy, detect(variables, images))}
    runs.update({method: (expected, jax.jit(model.postprocessor((side, side), **options, nms_method=method))(outputs))
                 for method in SOLVERS})
    for run, (want, got) in runs.items():
        for field, a, b in zip(got._fields, got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{name} {run}: {field}")
