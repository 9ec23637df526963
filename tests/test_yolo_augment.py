"""YOLO train transforms (flax_mobilenet/training/yolo_augment.py) against ultralytics 8.4.190's own.

Exactness: ultralytics' transforms draw from Python's `random` (and `np.random.uniform` for HSV); here they draw
from a stand-in backed by a Generator with the same seed as ours, so both consume the same numbers in the same
order, and the outputs must agree bit for bit (ultralytics on the BGR version of the same images).  Tests marked
`torch` need ultralytics (imported through yolo_reference, which stubs torchvision first); the property tests
(boxes follow the pixels, determinism, shapes, flip, the mosaic-off path) need only NumPy + OpenCV.
"""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest

from flax_mobilenet.training import yolo_augment as ya

SIZE = 256


# ------------------------------------------------------------------------------------------------- helpers
def _random_example(rng: np.random.Generator, h: int, w: int, k: int) -> ya.Example:
    """Noise image (warps move every pixel value) with k random boxes inside it."""
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = np.sort(rng.uniform(0, w, (k, 2)), 1)
    y = np.sort(rng.uniform(0, h, (k, 2)), 1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1] + 1, y[:, 1] + 1], 1).clip(0, [w, h, w, h]).astype(np.float32)
    return image, boxes, rng.integers(0, 80, k).astype(np.int32)


RAW_SHAPES = [(240, 320, 3), (300, 200, 4), (157, 411, 2), (512, 512, 5), (90, 130, 0), (400, 250, 3)]


@pytest.fixture(scope="module")
def raw():
    rng = np.random.default_rng(0)
    return [_random_example(rng, h, w, k) for h, w, k in RAW_SHAPES]


@pytest.fixture(scope="module")
def ul():
    """ultralytics' augment / base / instance modules (yolo_reference first: env, torchvision stub)."""
    import yolo_reference  # noqa: F401
    from ultralytics.data import augment, base
    from ultralytics.utils import instance
    return types.SimpleNamespace(augment=augment, base=base, Instances=instance.Instances)


class ReplayRandom:
    """Stands in for the `random` module ultralytics' augment.py uses: each call one draw from `rng`, exactly the
    draw our functions make at that point (uniform -> rng.uniform, randint(a, b) -> rng.integers(a, b + 1),
    random -> rng.random)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def uniform(self, a, b):
        return self.rng.uniform(a, b)

    def randint(self, a, b):
        return int(self.rng.integers(a, b + 1))

    def random(self):
        return self.rng.random()


def _replay(monkeypatch, ul, seed) -> None:
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(ul.augment, "random", ReplayRandom(rng))
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size=None: rng.uniform(low, high, size))


def _ul_labels(ul, image, boxes, classes) -> dict:
    """Our RGB example as ultralytics' labels dict (BGR image, pixel xyxy instances)."""
    return {"img": np.ascontiguousarray(image[..., ::-1]), "resized_shape": image.shape[:2],
            "ori_shape": image.shape[:2], "im_file": "x.png", "cls": classes.reshape(-1, 1).astype(np.float32),
            "instances": ul.Instances(boxes.copy(), bbox_format="xyxy", normalized=False)}


def _ul_boxes(labels) -> np.ndarray:
    labels["instances"].convert_bbox(format="xyxy")
    return labels["instances"].bboxes


class StandInDataset:
    """What ultralytics' Mosaic needs of a dataset: cache "ram" (extra images drawn with randint over the whole
    dataset, as ours), len, get_image_and_label (examples already `load_resized`)."""
    cache = "ram"
    use_obb = False

    def __init__(self, ul, examples):
        self.ul, self.examples = ul, examples

    def __len__(self):
        return len(self.examples)

    def get_image_and_label(self, i):
        return _ul_labels(self.ul, *self.examples[i])


def _resized(raw, size=SIZE):
    return [(*ya.load_resized(image, boxes, size), classes) for image, boxes, classes in raw]


# ------------------------------------------------------------------------------------- exact vs ultralytics
@pytest.mark.torch
@pytest.mark.parametrize("size", [SIZE, 321, 640])
def test_load_resized_matches_load_image(ul, raw, tmp_path, size):
    for n, (image, boxes, _) in enumerate(raw):
        path = tmp_path / f"{n}.png"
        cv2.imwrite(str(path), image[..., ::-1])
        stand_in = types.SimpleNamespace(ims=[None], im_files=[str(path)], npy_files=[tmp_path / f"{n}.npy"],
                                         cache=None, cv2_flag=cv2.IMREAD_COLOR, imgsz=size, augment=False,
                                         channels=3)
        theirs, hw0, hw = ul.base.BaseDataset.load_image(stand_in, 0)
        ours, ours_boxes = ya.load_resized(image, boxes, size)
        assert hw0 == image.shape[:2] and hw == ours.shape[:2] and max(hw) == size
        np.testing.assert_array_equal(ours, theirs[..., ::-1])
        gain = np.array([hw[1] / hw0[1], hw[0] / hw0[0]] * 2, np.float32)
        np.testing.assert_allclose(ours_boxes, boxes * gain, rtol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("seed", range(6))
def test_random_hsv_matches(ul, raw, monkeypatch, seed):
    image = raw[seed % len(raw)][0]
    image = np.concatenate([image[:64, :64], np.full((64, 64, 3), 255, np.uint8)], 1)  # plus pure white
    ours = ya.random_hsv(image, np.random.default_rng(seed))
    _replay(monkeypatch, ul, seed)
    labels = ul.augment.RandomHSV(0.015, 0.7, 0.4)({"img": np.ascontiguousarray(image[..., ::-1])})
    np.testing.assert_array_equal(ours, labels["img"][..., ::-1])
    assert not np.array_equal(ours, image)


@pytest.mark.torch
@pytest.mark.parametrize("seed, hyp", [
    (0, {}), (1, {}), (2, {"degrees": 10.0, "shear": 3.0}), (3, {"perspective": 0.0005, "degrees": 5.0}),
    (4, {"scale": (0.5, 0.7), "translate": 0.3})])
def test_random_perspective_matches(ul, raw, monkeypatch, seed, hyp):
    for image, boxes, classes in _resized(raw):
        rng = np.random.default_rng(seed)
        ours = ya.random_perspective(image, boxes, classes, rng, size=SIZE, **hyp)
        _replay(monkeypatch, ul, seed)
        labels = ul.augment.RandomPerspective(size=(SIZE, SIZE), **hyp)(_ul_labels(ul, image, boxes, classes))
        np.testing.assert_array_equal(ours[0], labels["img"][..., ::-1])
        np.testing.assert_array_equal(ours[1], _ul_boxes(labels))
        np.testing.assert_array_equal(ours[2], labels["cls"][:, 0].astype(np.int32))
        assert ours[0].shape == (SIZE, SIZE, 3)


@pytest.mark.torch
@pytest.mark.parametrize("size", [SIZE, 321])  # odd: border -size // 2 floors
@pytest.mark.parametrize("seed", range(6))
def test_mosaic_matches(ul, raw, monkeypatch, seed, size):
    examples = _resized(raw, size)
    index = seed % len(examples)
    rng = np.random.default_rng(seed)
    others = [int(rng.integers(len(examples))) for _ in range(3)]
    ours = ya.mosaic4([examples[i] for i in [index] + others], size, rng)

    _replay(monkeypatch, ul, seed)
    mosaic = ul.augment.Mosaic(StandInDataset(ul, examples), imgsz=size, p=1.0)
    labels = StandInDataset(ul, examples).get_image_and_label(index)
    params = mosaic.get_params(labels)  # (not __call__: that first draws the p test, which ours does not)
    labels = mosaic.apply_instances(mosaic.apply_image(labels, params), params)
    np.testing.assert_array_equal(ours[0], labels["img"][..., ::-1])
    np.testing.assert_array_equal(ours[1], _ul_boxes(labels))
    np.testing.assert_array_equal(ours[2], labels["cls"][:, 0].astype(np.int32))
    assert len(ours[1]) and ours[0].shape == (2 * size, 2 * size, 3)


def _ultralytics_train_example(ul, examples, index, mosaic, hyp):
    """v8_transforms' detection chain (mosaic p 1 or 0, no mixup/cutmix/copy-paste, no vertical flip)."""
    dataset = StandInDataset(ul, examples)
    labels = dataset.get_image_and_label(index)
    if mosaic:
        m = ul.augment.Mosaic(dataset, imgsz=SIZE, p=1.0)
        params = m.get_params(labels)
        labels = m.apply_instances(m.apply_image(labels, params), params)
        labels.pop("mix_labels")
    labels = ul.augment.RandomPerspective(degrees=hyp.get("degrees", 0.0), translate=0.1, scale=0.5,
                                          shear=hyp.get("shear", 0.0), size=(SIZE, SIZE))(labels)
    labels = ul.augment.RandomHSV(0.015, 0.7, 0.4)(labels)
    labels = ul.augment.RandomFlip(p=0.5, direction="horizontal")(labels)
    return labels


@pytest.mark.torch
@pytest.mark.parametrize("seed, mosaic, hyp", [
    (0, True, {}), (1, True, {}), (2, True, {"degrees": 10.0, "shear": 2.0}), (3, True, {}),
    (4, False, {}), (5, False, {"degrees": 10.0})])
def test_train_example_matches(ul, raw, monkeypatch, seed, mosaic, hyp):
    examples = _resized(raw)
    index = (3 * seed + 1) % len(raw)
    ours = ya.train_example(lambda i: raw[i], index, np.random.default_rng(seed), size=SIZE, mosaic=mosaic,
                            num_examples=len(raw), **hyp)
    _replay(monkeypatch, ul, seed)
    labels = _ultralytics_train_example(ul, examples, index, mosaic, hyp)
    np.testing.assert_array_equal(ours[0], labels["img"][..., ::-1])
    # ultralytics' flip goes through xywh: float32 rounding only.
    np.testing.assert_allclose(ours[1], _ul_boxes(labels), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(ours[2], labels["cls"][:, 0].astype(np.int32))


@pytest.mark.torch
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_flip_matches(ul, raw, monkeypatch, p):
    image, boxes, classes = raw[0]
    ours = ya.random_flip_lr(image, boxes, np.random.default_rng(0), p)
    _replay(monkeypatch, ul, 0)
    labels = ul.augment.RandomFlip(p=p, direction="horizontal")(_ul_labels(ul, image, boxes, classes))
    np.testing.assert_array_equal(ours[0], labels["img"][..., ::-1])
    np.testing.assert_allclose(ours[1], _ul_boxes(labels), rtol=0, atol=1e-4)


@pytest.mark.torch
def test_rect_batch_shapes_and_letterbox_match(ul, raw):
    rng = np.random.default_rng(3)
    hw = rng.integers(100, 900, (37, 2))
    hw[5], hw[9] = hw[1], hw[1] * 2  # equal aspect ratios
    for batch_size, img_size in [(4, 640), (8, 320), (1, 256)]:
        stand_in = types.SimpleNamespace(ni=len(hw), batch_size=batch_size, labels=[{"shape": s} for s in hw],
                                         im_files=list(range(len(hw))), imgsz=img_size, stride=32, pad=0.5)
        ul.base.BaseDataset.set_rectangle(stand_in)
        rect = ya.rect_batch_shapes(hw, batch_size, img_size)
        np.testing.assert_array_equal(rect.order, stand_in.im_files)
        np.testing.assert_array_equal(rect.batch_index, stand_in.batch)
        np.testing.assert_array_equal(rect.batch_shapes, stand_in.batch_shapes)
        np.testing.assert_array_equal(rect.shapes, stand_in.batch_shapes[stand_in.batch])
        assert (rect.shapes % 32 == 0).all()

    # Eval: load_resized, then LetterBox(rect shape, scaleup=False): boxes exact; the image exact without a
    # resize, within 1 grey level with one (preprocessing.letterbox's resize vs cv2's).
    for image, boxes, classes in _resized(raw):
        rect = ya.rect_batch_shapes(np.array([image.shape[:2]]), 1, SIZE)
        for shape in [tuple(rect.shapes[0]), (SIZE, SIZE), (160, 192)]:
            ours, ours_boxes, info = ya.letterbox(image, boxes, shape, scaleup=False)
            labels = ul.augment.LetterBox(new_shape=shape, scaleup=False)(_ul_labels(ul, image, boxes, classes))
            theirs = labels["img"][..., ::-1]
            assert ours.shape == theirs.shape == (*shape, 3)
            np.testing.assert_array_equal(ours_boxes, _ul_boxes(labels))
            diff = np.abs(ours.astype(int) - theirs.astype(int)).max()
            assert diff == 0 if info.unpadded == info.original else diff <= 1


# ----------------------------------------------------------------------------------------------- properties
COLOURS = [(c0, c1, c2) for c0 in (0, 80, 160, 240) for c1 in (0, 80, 160, 240) for c2 in (0, 80, 160, 240)
           if (c0, c1, c2) not in ((0, 0, 0), (80, 80, 80), (160, 160, 160))]


def _rect_example(index: int) -> ya.Example:
    """A dark image with two non-overlapping filled rectangles; class = colour id (unique per index)."""
    rng = np.random.default_rng(100 + index)
    h, w = [(300, 400), (400, 300), (256, 256), (180, 500), (500, 220), (330, 330)][index]
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = (20, 20, 20)
    boxes, classes = [], []
    for j, (xlo, xhi) in enumerate([(0.02, 0.45), (0.55, 0.98)]):
        x1 = int(rng.uniform(xlo, xlo + 0.15) * w)
        x2 = int(rng.uniform(xhi - 0.2, xhi) * w)
        y1 = int(rng.uniform(0.02, 0.4) * h)
        y2 = int(rng.uniform(0.6, 0.98) * h)
        c = 2 * index + j
        image[y1:y2, x1:x2] = COLOURS[c * 5 % len(COLOURS)]
        boxes.append([x1, y1, x2, y2])
        classes.append(c)
    return image, np.array(boxes, np.float32), np.array(classes, np.int32)


def _assert_boxes_follow_pixels(image, boxes, classes, tol=2):
    """Each box encloses its colour's pixels tightly: the pixels of colour `class` within the box grown by tol + 1
    span the box to within tol px on every side."""
    assert len(boxes)
    h, w = image.shape[:2]
    for box, c in zip(boxes, classes):
        colour = np.array(COLOURS[c * 5 % len(COLOURS)])
        x1, y1, x2, y2 = box
        gx1, gy1 = max(int(np.floor(x1)) - tol - 1, 0), max(int(np.floor(y1)) - tol - 1, 0)
        gx2, gy2 = min(int(np.ceil(x2)) + tol + 1, w), min(int(np.ceil(y2)) + tol + 1, h)
        window = image[gy1:gy2, gx1:gx2].astype(int)
        match = np.abs(window - colour).max(-1) <= 12
        rows, cols = np.nonzero(match)
        assert len(rows), (box, c)
        extent = np.array([cols.min() + gx1, rows.min() + gy1, cols.max() + 1 + gx1, rows.max() + 1 + gy1])
        np.testing.assert_allclose(box, extent, atol=tol, err_msg=f"class {c}")


@pytest.mark.parametrize("mosaic", [True, False])
@pytest.mark.parametrize("seed", range(10))
def test_boxes_follow_pixels(seed, mosaic):
    image, boxes, classes = ya.train_example(_rect_example, seed % 6, np.random.default_rng(seed), size=SIZE,
                                             mosaic=mosaic, num_examples=6, hsv_h=0, hsv_s=0, hsv_v=0)
    _assert_boxes_follow_pixels(image, boxes, classes)


def test_outputs_and_determinism(raw):
    read = lambda i: raw[i]  # noqa: E731
    outs = [ya.train_example(read, 0, np.random.default_rng(s), size=SIZE, mosaic=True, num_examples=len(raw))
            for s in (7, 7, 8)]
    for image, boxes, classes in outs:
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert classes.dtype == np.int32 and classes.shape == (len(boxes),)
        assert (boxes >= 0).all() and (boxes <= SIZE).all()
        assert (boxes[:, 2] - boxes[:, 0] > 2).all() and (boxes[:, 3] - boxes[:, 1] > 2).all()
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs[0][0], outs[2][0])
    # the single-image path, an odd size, an input without boxes
    image, boxes, classes = ya.train_example(lambda i: raw[4], 0, np.random.default_rng(1), size=321,
                                             mosaic=False, num_examples=1)
    assert image.shape == (321, 321, 3) and boxes.shape == (0, 4) and classes.shape == (0,)


def test_draw_counts():
    """Each op consumes the documented draws, so a stream stays aligned whatever the data."""
    def after(draw):
        rng = np.random.default_rng(5)
        draw(rng)
        return rng.random()

    image = np.full((50, 60, 3), 90, np.uint8)
    boxes, classes = np.array([[1, 2, 30, 40]], np.float32), np.array([3], np.int32)
    assert after(lambda r: ya.random_perspective(image, boxes, classes, r, size=64)) == \
        after(lambda r: [r.uniform(0, 1) for _ in range(8)])
    assert after(lambda r: ya.random_hsv(image, r)) == after(lambda r: r.uniform(-1, 1, 3))
    assert after(lambda r: ya.random_hsv(image, r, 0, 0, 0)) == after(lambda r: None)
    assert after(lambda r: ya.random_flip_lr(image, boxes, r, 0.0)) == after(lambda r: r.random())
    assert after(lambda r: ya.mosaic4([(image, boxes, classes)] * 4, 64, r)) == \
        after(lambda r: [r.uniform(0, 1) for _ in range(2)])


def test_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    boxes = np.array([[1, 2, 11, 12], [20, 0, 30, 20]], np.float32)
    flipped, fboxes = ya.random_flip_lr(image, boxes, rng, p=1.0)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_array_equal(fboxes, [[19, 2, 29, 12], [0, 0, 10, 20]])
    same, sboxes = ya.random_flip_lr(image, boxes, rng, p=0.0)
    np.testing.assert_array_equal(same, image)
    np.testing.assert_array_equal(sboxes, boxes)


def test_mosaic_off_without_jitter_is_letterbox():
    """No mosaic, translate 0, scale 1: the resized image centred on a 114 square, i.e. the letterbox."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 110, 90], [150, 5, 199, 60]], np.float32)
    classes = np.array([1, 2], np.int32)
    out, out_boxes, out_classes = ya.train_example(lambda i: (image, boxes, classes), 0, rng, size=320,
                                                   mosaic=False, num_examples=1, translate=0.0, scale=0.0,
                                                   hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.0)
    resized, resized_boxes = ya.load_resized(image, boxes, 320)
    expected, expected_boxes, info = ya.letterbox(resized, resized_boxes, 320)
    assert info.pad == (0, 80) and resized.shape == (160, 320, 3)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out_boxes, expected_boxes)
    np.testing.assert_array_equal(out_classes, classes)


def test_mosaic_layout():
    """Mosaic corners: each tile touches the centre, canvas 114 elsewhere; boxes clipped to the canvas."""
    tiles = [(np.full((100, 120, 3), 10 * (i + 1), np.uint8), np.array([[0, 0, 120, 100]], np.float32),
              np.array([i], np.int32)) for i in range(4)]
    rng = np.random.default_rng(0)
    canvas, boxes, classes = ya.mosaic4(tiles, 128, rng)
    yc, xc = (int(v) for v in np.random.default_rng(0).uniform(64, 192, 2))
    assert canvas.shape == (256, 256, 3)
    assert canvas[yc - 1, xc - 1, 0] == 10 and canvas[yc - 1, xc, 0] == 20
    assert canvas[yc, xc - 1, 0] == 30 and canvas[yc, xc, 0] == 40
    np.testing.assert_array_equal(classes, [0, 1, 2, 3])
    np.testing.assert_array_equal(boxes, [[max(xc - 120, 0), max(yc - 100, 0), xc, yc],
                                          [xc, max(yc - 100, 0), min(xc + 120, 256), yc],
                                          [max(xc - 120, 0), yc, xc, min(yc + 100, 256)],
                                          [xc, yc, min(xc + 120, 256), min(yc + 100, 256)]])
    assert (canvas[:, : max(xc - 120, 0)] == 114).all() and (canvas[:, min(xc + 120, 256):] == 114).all()
