"""The device share of classification augmentation (`device_augment.py`) and the host's crop window, against
torchvision's transforms.v2 (its ops on uint8 tensors, nearest, fill 0; its draws statistically), exact resume of
the device-augmented batches, and the trainer's background device prefetch."""
import itertools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from flax_mobilenet.registry import weights_info
from flax_mobilenet.training import augment, device_augment as da
from flax_mobilenet.training.defaults import base_config
from flax_mobilenet.training.experiment import Experiment
from flax_mobilenet.training.trainer import _device_batches

tf = augment.tf
N = 4000  # draws per distribution test


def _torchvision():
    from torch_reference import torch  # fails loudly when PyTorch is missing (CI installs it)
    from torchvision.transforms import v2

    return torch, v2


def _photo(height=36, width=44, seed=0):
    """Smooth structure plus noise: geometric ops move edges, colour ops see a spread of levels."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) * 128 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


OPS = da.RANDAUGMENT_OPS + ("Invert",)


@pytest.mark.torch
@pytest.mark.parametrize("name", OPS)
def test_each_op_matches_torchvision(name):
    torch, v2 = _torchvision()
    reference = v2.AutoAugment()
    image = _photo()
    height, width = image.shape[:2]
    bins = da.magnitude_bins(name, 10, height, width)
    op = jax.jit(lambda im, m: da.apply_op(name, im, m))
    for b in (1, 5, 9):
        for sign in ((1, -1) if name in da.SIGNED else (1,)):
            magnitude = np.float32(sign * bins[b])
            ours = np.asarray(op(jnp.asarray(image), magnitude)).astype(int)
            theirs = reference._apply_image_or_video_transform(
                torch.from_numpy(image).permute(2, 0, 1).contiguous(), name, float(magnitude),
                interpolation=v2.InterpolationMode.NEAREST, fill=reference._fill).permute(1, 2, 0).numpy().astype(int)
            difference = np.abs(ours - theirs)
            if name in da.GEOMETRIC:  # a sample point exactly between two pixels may round the other way
                assert (difference > 0).mean() <= 0.01, (name, magnitude)
            else:  # float rounding of the blends: at most one level
                assert difference.max() <= 1, (name, magnitude)


def test_equalize_and_autocontrast_edge_cases_keep_flat_images():
    flat = jnp.full((8, 8, 3), 77, jnp.uint8)
    np.testing.assert_array_equal(da.equalize(flat), flat)
    np.testing.assert_array_equal(da.autocontrast(flat), flat)


def _frequencies(values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(values.reshape(-1), minlength=size) / values.size


def test_autoaugment_draws_follow_the_policy_table():
    keys = jax.random.split(jax.random.key(0), N)
    index, values, applies = jax.vmap(lambda k: da.autoaugment_choices(k, 224, 224))(keys)
    index, values, applies = map(np.asarray, (index, values, applies))
    names, table = da.AUTOAUGMENT_OPS, da.AUTOAUGMENT_IMAGENET
    # a sub-policy shows as its (ops, |magnitudes|); identical ones are pooled: their shares add up, their apply
    # probabilities average
    def signature(ops, magnitudes):
        return tuple(int(o) for o in ops), tuple(np.round(np.abs(magnitudes), 4))

    groups: dict = {}
    for sub in table:
        key = signature([names.index(n) for n, _, _ in sub], [da.magnitude_bins(n, 10, 224, 224)[b] for n, _, b in sub])
        groups.setdefault(key, []).append([p for _, p, _ in sub])
    drawn = [signature(i, v) for i, v in zip(index, values)]
    assert set(drawn) <= set(groups)
    for key, probabilities in groups.items():
        rows = np.array([d == key for d in drawn])
        share = len(probabilities) / len(table)
        assert abs(rows.mean() - share) < 4 * np.sqrt(share * (1 - share) / N), key
        for slot, probability in enumerate(np.mean(probabilities, axis=0)):
            assert abs(applies[rows, slot].mean() - probability) < 4 * np.sqrt(0.25 / rows.sum()) + 1e-9, key
    signed = np.isin(index, [names.index(n) for n in da.SIGNED if n in names]) & (values != 0)
    assert abs((values[signed] < 0).mean() - 0.5) < 4 * np.sqrt(0.25 / signed.sum())
    assert (values[~signed & (index >= 0)] >= 0).all()


def test_randaugment_draws_are_uniform_with_fair_signs():
    keys = jax.random.split(jax.random.key(1), N)
    index, values = map(np.asarray, jax.vmap(lambda k: da.randaugment_choices(k, 2, 9, 224, 224))(keys))
    share = 1 / len(da.RANDAUGMENT_OPS)
    assert np.abs(_frequencies(index, len(da.RANDAUGMENT_OPS)) - share).max() < 4 * np.sqrt(share / (2 * N))
    table = np.array([da.magnitude_bins(n, 31, 224, 224)[9] for n in da.RANDAUGMENT_OPS])
    np.testing.assert_allclose(np.abs(values), table[index], rtol=1e-6)
    signed = np.isin(index, [da.RANDAUGMENT_OPS.index(n) for n in da.SIGNED])
    assert abs((values[signed] < 0).mean() - 0.5) < 4 * np.sqrt(0.25 / signed.sum())


@pytest.mark.torch
def test_random_erasing_probability_and_area_match_torchvision():
    torch, v2 = _torchvision()
    height, width, probability = 32, 40, 0.3
    ones = jnp.ones((height, width, 3))
    erased = jax.jit(jax.vmap(lambda k: da.random_erasing(k, ones, probability)))(
        jax.random.split(jax.random.key(2), N))
    zero = np.asarray(erased[..., 0] == 0)
    hit = zero.any(axis=(1, 2))
    assert abs(hit.mean() - probability) < 4 * np.sqrt(probability * (1 - probability) / N)
    ours_area = zero[hit].sum(axis=(1, 2)) / (height * width)
    for z in zero[hit][:50]:  # a solid rectangle
        rows, cols = np.nonzero(z)
        assert z[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    torch.manual_seed(0)
    eraser = v2.RandomErasing(p=1.0, value=0)
    image = torch.ones(3, height, width)
    theirs_area = []
    for _ in range(1500):
        params = eraser.make_params([image])
        theirs_area.append(params["h"] * params["w"] / (height * width))
    assert stats.ks_2samp(ours_area, theirs_area).pvalue > 1e-3


@pytest.mark.torch
@pytest.mark.parametrize("height, width, scale_min", [(375, 500, 0.08), (120, 900, 0.5)])
def test_crop_window_distribution_matches_torchvision(height, width, scale_min):
    torch, v2 = _torchvision()
    draw = tf.function(lambda seeds: tf.map_fn(lambda s: augment.crop_window(height, width, scale_min, s), seeds,
                                               fn_output_signature=tf.int32))
    windows = draw(tf.stack([tf.range(N, dtype=tf.int64), tf.fill([N], tf.constant(7, tf.int64))], 1)).numpy()
    assert (windows[:, 0] >= 0).all() and (windows[:, 0] + windows[:, 2] <= height).all()
    assert (windows[:, 1] >= 0).all() and (windows[:, 1] + windows[:, 3] <= width).all()
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    crop = v2.RandomResizedCrop(224, scale=(scale_min, 1.0))
    theirs = np.array([[p["top"], p["left"], p["height"], p["width"]]
                       for p in (crop.make_params([image]) for _ in range(2000))])
    for name, column in (("area", lambda w: w[:, 2] * w[:, 3]), ("aspect", lambda w: w[:, 3] / w[:, 2]),
                         ("top", lambda w: w[:, 0]), ("left", lambda w: w[:, 1])):
        assert stats.ks_2samp(column(windows), column(theirs)).pvalue > 1e-3, name


def _jpeg_bytes(tmp_path, height, width, suffix=".jpg"):
    """A real photo (scikit-image's astronaut) at height x width, as the file's bytes."""
    from PIL import Image
    from skimage import data

    path = tmp_path / f"photo{suffix}"
    Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR).save(
        path, **({"quality": 95} if suffix == ".jpg" else {}))
    return tf.io.read_file(str(path))


def test_jpeg_window_decoding_matches_decode_then_crop(tmp_path):
    """Decoding only the window gives what decoding everything (with the same IDCT), then cropping gives, up to
    JPEG's chroma upsampling at the window's edges."""
    contents = _jpeg_bytes(tmp_path, 375, 500)
    decoded = tf.io.decode_jpeg(contents, channels=3, dct_method=augment.DCT_METHOD)
    for i in range(4):
        seed = tf.constant([i, 5], tf.int64)
        ours = augment.random_resized_crop(contents, 224, 0.08, seed).numpy().astype(float)
        whole = augment.random_resized_crop(decoded, 224, 0.08, seed).numpy()
        assert np.abs(ours - whole).mean() < 0.1


def test_big_windows_decode_downscaled_in_the_dct_domain(tmp_path):
    """A window >= 4 x 224 a side decodes at 1/4 (the largest ratio keeping it >= 224): exactly the window of the
    1/4-scaled decode, and close to the full-resolution crop's resize (libjpeg's scaled IDCT filters a little
    differently from the antialiased resize)."""
    contents = _jpeg_bytes(tmp_path, 1000, 1200)
    seed = tf.constant([0, 5], tf.int64)
    window = augment.crop_window(1000, 1200, 0.9, seed).numpy()
    assert 4 * 224 <= min(window[2:]) < 8 * 224
    top, left, h, w = window // 4
    quarter = tf.io.decode_jpeg(contents, ratio=4, dct_method=augment.DCT_METHOD)[top:top + h, left:left + w]
    ours = augment.random_resized_crop(contents, 224, 0.9, seed).numpy()
    np.testing.assert_array_equal(ours, augment._resize(quarter, 224, antialias=True))
    whole = augment.random_resized_crop(augment.decode_image(contents), 224, 0.9, seed).numpy()
    assert np.abs(ours.astype(float) - whole).mean() < 8.0


def test_the_plain_crop_resize_is_bilinear_without_antialiasing(tmp_path):
    """augment.crop_antialias=False: the same window (here below 2 x 224 a side: no DCT-domain ratio), resized by
    plain bilinear; the pipeline takes the option from the config."""
    from flax_mobilenet.training import transforms

    contents = _jpeg_bytes(tmp_path, 375, 500)
    seed = tf.constant([3, 5], tf.int64)
    window = augment.crop_window(375, 500, 0.9, seed).numpy()
    top, left, h, w = window
    crop = tf.io.decode_jpeg(contents, channels=3, dct_method=augment.DCT_METHOD)[top:top + h, left:left + w]
    plain = augment.random_resized_crop(contents, 224, 0.9, seed, antialias=False).numpy()
    difference = np.abs(plain.astype(int) - augment._resize(crop, 224, antialias=False).numpy())
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # JPEG's chroma upsampling at the window's edge
    assert not np.array_equal(plain, augment.random_resized_crop(contents, 224, 0.9, seed).numpy())
    config = base_config()
    config.image_size, config.augment.crop_antialias, config.augment.crop_scale_min = 224, False, 0.9
    preprocessing = transforms.Preprocessing("classification", weights_info("mobilenet_v2"))
    row = transforms.train_transform(None, config, preprocessing)({"image": contents, "label": 0}, seed)
    np.testing.assert_array_equal(row["image"], augment.random_resized_crop(
        contents, 224, 0.9, tf.random.experimental.stateless_split(seed, 2)[0], antialias=False))


@pytest.mark.torch
def test_the_antialiased_crop_resize_is_torchvisions_pil_path(tmp_path):
    """RandomResizedCrop's resize (augment.crop_antialias=True) is torchvision's on a PIL image (PIL's bilinear
    resize), the path of its ImageNet recipes, for windows shrunk, enlarged and both: the same bytes for windows at
    least as wide as tall, within one level for taller ones (Pillow 13 may run its vertical pass first:
    tests/test_resample.py)."""
    from PIL import Image

    _, v2 = _torchvision()
    contents = _jpeg_bytes(tmp_path, 375, 500)
    decoded = tf.io.decode_jpeg(contents, channels=3, dct_method=augment.DCT_METHOD)
    picture = Image.fromarray(decoded.numpy())
    wide = 0
    for i in range(12):
        scale_min, size = (0.9, 0.08)[i % 2], (224, 320)[i // 6]
        seed = tf.constant([i, size], tf.int64)
        top, left, h, w = (int(v) for v in augment.crop_window(375, 500, scale_min, seed))
        ours = augment.random_resized_crop(decoded, size, scale_min, seed).numpy()
        theirs = np.asarray(v2.functional.resized_crop(picture, top, left, h, w, [size, size], antialias=True))
        if w >= h:
            wide += 1
            np.testing.assert_array_equal(ours, theirs, err_msg=f"window {h}x{w} -> {size}")
        else:
            assert np.abs(ours.astype(int) - theirs).max() <= 1, f"window {h}x{w} -> {size}"
    assert wide >= 4


def test_non_jpeg_files_take_the_decode_then_crop_path(tmp_path):
    contents = _jpeg_bytes(tmp_path, 60, 80, suffix=".png")
    seed = tf.constant([1, 2], tf.int64)
    np.testing.assert_array_equal(augment.random_resized_crop(contents, 32, 0.08, seed),
                                  augment.random_resized_crop(augment.decode_image(contents), 32, 0.08, seed))


def test_flip_probability_and_no_policy_graph_when_disabled():
    image = jnp.asarray(np.tile(np.arange(6, dtype=np.uint8)[None, :, None], (4, 1, 3)))
    transform = da.DeviceTransform((0.0,) * 3, (1 / 255,) * 3, flip=True)
    seeds = jax.random.key_data(jax.random.split(jax.random.key(3), N))
    batch = {"image": jnp.broadcast_to(image, (N, *image.shape)), "seed": seeds}
    out = np.asarray(jax.jit(transform)(batch)["image"])
    flipped = out[:, 0, 0, 0] == 5
    assert np.isin(out[:, 0, 0, 0], (0, 5)).all() and abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / N)
    jaxpr = str(jax.make_jaxpr(transform)(batch))
    assert "switch" not in jaxpr and "cond" not in jaxpr and "scatter" not in jaxpr  # no policy ops traced
    with pytest.raises(ValueError, match="unknown augment.policy 'autoaug'"):
        da.DeviceTransform((0.0,) * 3, (1.0,) * 3, policy="autoaug")


def test_device_augmented_batch_resumes_exactly():
    """Batch k, augmented on the device, is the same whether the run started at step 0 or at step k."""
    config = base_config()
    config.dataset, config.image_size, config.seed = "digits", 32, 5
    config.augment.update(crop_scale_min=0.5, flip=True, policy="autoaugment", random_erasing=0.5)
    pipeline = Experiment(config).pipeline
    augment_batch = jax.jit(pipeline.device_transform(train=True))
    kwargs = dict(global_batch_size=64, process_index=0, process_count=1)
    k = 1437 // 64 + 2  # in the second epoch
    straight = next(itertools.islice(pipeline.train_batches(**kwargs), k, None))
    resumed = next(Experiment(config).pipeline.train_batches(start_step=k, **kwargs))
    np.testing.assert_array_equal(augment_batch(resumed)["image"], augment_batch(straight)["image"])
    other = next(itertools.islice(pipeline.train_batches(**kwargs), k + 1, None))
    assert not np.array_equal(augment_batch(other)["image"], augment_batch(straight)["image"])


# ------------------------------------------------------------------------------------- device prefetch
def _sharding():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _rows(count, fail_at=None):
    for i in range(count):
        if i == fail_at:
            raise RuntimeError(f"unreadable batch {i}")
        yield {"x": np.full((jax.device_count() * 2,), i, np.int32)}


def test_device_prefetch_keeps_order_and_raises_the_producers_error():
    assert [int(b["x"][0]) for b in _device_batches(_rows(5), _sharding())] == list(range(5))
    batches = _device_batches(_rows(5, fail_at=3), _sharding())
    assert [int(next(batches)["x"][0]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="unreadable batch 3"):
        next(batches)


def test_device_prefetch_thread_is_a_daemon_and_stops_when_closed():
    closed = threading.Event()

    def endless():
        try:
            yield from _rows(10**9)
        finally:
            closed.set()

    batches = _device_batches(endless(), _sharding())
    next(batches)
    thread = next(t for t in threading.enumerate() if t.name == "device-batches")
    assert thread.daemon
    batches.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and closed.is_set()
