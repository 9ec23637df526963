"""The host's antialiased bilinear resize (`training/resample.py`) against Pillow's, the resize torchvision's
RandomResizedCrop runs on PIL images.  Pillow 13 runs its two passes in an order of its own choosing for images
taller than wide (the vertical one first, sometimes), which moves some pixels by one level; for the rest, and on
Pillow <= 12 for all shapes but those over 100x taller than wide, the bytes are the same."""
import numpy as np
import pytest
from PIL import Image

from flax_mobilenet.training import resample


def _pillow(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_square_outputs_of_windows_at_least_as_wide_as_tall_are_pillows_bytes():
    """RandomResizedCrop's case: shrunk (by up to 4x, the widest filter), enlarged, and both at once."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        size = int(rng.choice([32, 160, 224, 320]))
        height = int(rng.integers(8, 4 * size))
        width = int(rng.integers(height, max(height + 1, 4 * size)))
        image = _random_image(rng, height, width)
        np.testing.assert_array_equal(resample.resize_bilinear(image, size, size), _pillow(image, size, size),
                                      err_msg=f"{height}x{width} -> {size}")


def test_any_shape_is_within_one_level_of_pillow_and_unbiased():
    rng = np.random.default_rng(1)
    differences = []
    for _ in range(60):
        height, width, out_height, out_width = (int(v) for v in rng.integers(1, 700, 4))
        image = _random_image(rng, height, width)
        ours = resample.resize_bilinear(image, out_height, out_width)
        assert ours.shape == (out_height, out_width, 3) and ours.dtype == np.uint8
        difference = ours.astype(int) - _pillow(image, out_height, out_width)
        assert np.abs(difference).max() <= 1, f"{height}x{width} -> {out_height}x{out_width}"
        differences.append(difference.ravel())
    differences = np.concatenate(differences)
    assert np.abs(differences).mean() < 0.1 and abs(differences.mean()) < 0.01


@pytest.mark.parametrize("shape, out", [((1, 1), (224, 224)), ((1, 500), (224, 224)), ((500, 1), (7, 7)),
                                        ((224, 224), (224, 224)), ((224, 300), (224, 224)), ((100, 80), (100, 160))])
def test_degenerate_and_one_axis_shapes(shape, out):
    image = _random_image(np.random.default_rng(2), *shape)
    ours = resample.resize_bilinear(image, *out)
    np.testing.assert_array_equal(ours, _pillow(image, *out))
    if shape == out:
        np.testing.assert_array_equal(ours, image)


def test_filter_taps_stay_inside_the_input_and_sum_to_one():
    for in_size, out_size in ((375, 224), (224, 224), (50, 224), (3000, 224), (1, 7)):
        first, count, weights = resample.filter_taps(in_size, out_size)
        assert (first >= 0).all() and (first + count <= in_size).all() and (count >= 1).all()
        assert (weights >= 0).all()
        assert np.abs(weights.sum(1) - (1 << resample.PRECISION_BITS)).max() <= weights.shape[1]


def test_a_window_is_the_crop_of_the_whole_resize_and_mirror_its_flip():
    rng = np.random.default_rng(3)
    for height, width, out_height, out_width in ((90, 120, 200, 260), (120, 90, 60, 90), (50, 70, 50, 140),
                                                 (64, 48, 100, 48)):
        image = _random_image(rng, height, width)
        whole = resample.resize_bilinear(image, out_height, out_width)
        for _ in range(4):
            top, left = int(rng.integers(0, out_height - 1)), int(rng.integers(0, out_width - 1))
            bottom, right = int(rng.integers(top + 1, out_height + 1)), int(rng.integers(left + 1, out_width + 1))
            crop = whole[top:bottom, left:right]
            for mirror in (False, True):
                np.testing.assert_array_equal(
                    resample.resize_bilinear(image, out_height, out_width, (top, bottom), (left, right), mirror),
                    crop[:, ::-1] if mirror else crop)
