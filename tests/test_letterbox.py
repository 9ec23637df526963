"""YOLO input transform (preprocessing.letterbox) and box mapping back (scale_boxes_back) against ultralytics'
`LetterBox` (cv2 INTER_LINEAR) and `ops.scale_boxes`, on the photos ultralytics ships."""
import numpy as np
import pytest
import torch_reference  # noqa: F401  (first: stubs torchvision)
import torch

from flax_mobilenet.preprocessing import LetterboxInfo, letterbox, load_image, resize_linear_uint8, scale_boxes_back

import cv2  # noqa: E402
from ultralytics.data import augment  # noqa: E402
from ultralytics.utils import ASSETS, ops  # noqa: E402

CASES = [  # (new_shape, options): the predictor's (auto), val's square (no upscale), a rectangle, an upscale
    (640, dict(auto=True)), (640, dict()), (640, dict(scaleup=False)), ((320, 416), dict()), (320, dict(auto=True)),
    (640, dict(center=False)), (1600, dict(auto=True)),
]


@pytest.fixture(scope="module")
def photos():
    return {name: np.ascontiguousarray(cv2.imread(str(ASSETS / name))[..., ::-1]) for name in ("bus.jpg", "zidane.jpg")}


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_letterbox_matches_ultralytics(photos, name):
    rgb = photos[name]
    for new_shape, options in CASES:
        expected = augment.LetterBox(new_shape, **options)(image=np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1]
        got, info = letterbox(rgb, new_shape, **options)
        assert got.shape == expected.shape and got.dtype == np.uint8, (new_shape, options)
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        assert diff.max() <= 1, (new_shape, options)  # cv2's fixed-point rounding
        if new_shape != 1600:  # downscales: bit-exact
            assert diff.max() == 0, (new_shape, options)
        assert (diff > 0).mean() < 1e-3
        left, top = info.pad
        w, h = info.unpadded
        assert info.original == (rgb.shape[1], rgb.shape[0])
        assert (got[:top] == 114).all() and (got[top + h:] == 114).all()
        assert (got[:, :left] == 114).all() and (got[:, left + w:] == 114).all()


def test_letterbox_shapes_and_pil_input():
    bus = load_image(ASSETS / "bus.jpg")
    zidane = load_image(ASSETS / "zidane.jpg")
    assert bus.size == (810, 1080) and zidane.size == (1280, 720)
    pixels, info = letterbox(bus, auto=True)
    assert pixels.shape == (640, 480, 3) and info == LetterboxInfo((640 / 1080,) * 2, (0, 0), (480, 640), (810, 1080))
    pixels, info = letterbox(zidane, auto=True)
    assert pixels.shape == (384, 640, 3) and info.pad == (0, 12) and info.unpadded == (640, 360)
    pixels, info = letterbox(zidane)
    assert pixels.shape == (640, 640, 3) and info.pad == (0, 140)
    small = np.full((100, 70), 7, np.uint8)  # grayscale, no upscaling
    pixels, info = letterbox(small, 640, scaleup=False)
    assert pixels.shape == (640, 640, 1) and info.unpadded == (70, 100) and info.ratio == (1.0, 1.0)
    assert (pixels[270:370, 285:355] == 7).all()


def test_resize_within_one_grey_level_of_cv2():
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w, new_h, new_w = (int(v) for v in rng.integers(1, 200, 4))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        got = resize_linear_uint8(image, (new_w, new_h))
        assert np.abs(got.astype(np.int16) - expected.astype(np.int16)).max() <= 1, (h, w, new_h, new_w)


@pytest.mark.parametrize("original, new_shape, options", [
    ((1080, 810), 640, dict(auto=True)), ((720, 1280), 640, dict(auto=True)), ((720, 1280), 640, dict()),
    ((333, 517), (320, 416), dict()), ((1001, 37), 320, dict()), ((100, 70), 640, dict(scaleup=False)),
])
def test_scale_boxes_back_matches_ultralytics(original, new_shape, options):
    rng = np.random.default_rng(1)
    padded, info = letterbox(np.zeros((*original, 3), np.uint8), new_shape, **options)
    input_hw = padded.shape[:2]
    xy = rng.uniform(-30, max(input_hw) + 30, (64, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0, 200, (64, 2)).astype(np.float32)], 1)
    # Its validator's form: ratio_pad = ((gain_h, gain_w), (pad_w, pad_h)), gain the letterbox's float ratio.
    ratio_pad = ((info.ratio[1], info.ratio[0]), info.pad)
    expected = ops.scale_boxes(input_hw, torch.from_numpy(boxes.copy()), original, ratio_pad=ratio_pad).numpy()
    np.testing.assert_array_equal(scale_boxes_back(boxes, info, original, use_ratio=True), expected)
    # Its predictor's form (gain recomputed from the shapes: unpadded / original), also on numpy input; ultralytics
    # assumes the image was scaled to fit, which a no-upscale letterbox does not do: there the explicit form holds.
    gains = ((info.unpadded[1] / original[0], info.unpadded[0] / original[1]), info.pad)
    expected = ops.scale_boxes(input_hw, torch.from_numpy(boxes.copy()), original, ratio_pad=gains).numpy()
    got = scale_boxes_back(boxes, info, original)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(scale_boxes_back(boxes, info), got)  # original size from the info
    if options.get("scaleup", True):
        np.testing.assert_array_equal(got, ops.scale_boxes(input_hw, torch.from_numpy(boxes.copy()), original).numpy())
        np.testing.assert_array_equal(got, ops.scale_boxes(input_hw, boxes.copy(), original))
    assert (got[:, 0::2] >= 0).all() and (got[:, 0::2] <= original[1]).all()
    assert (got[:, 1::2] >= 0).all() and (got[:, 1::2] <= original[0]).all()
