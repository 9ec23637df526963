"""The `shapes` dataset and the box/mask-aware augmentations (dense_augment): determinism, boxes and masks
aligned with the pixels through every transform, static shapes, and torchvision's semantics (RandomIoUCrop's
acceptance rule, crop and sanitize; the photometric kernels)."""
import hashlib

import numpy as np
import pytest

from flax_mobilenet.training import dense_augment as da
from flax_mobilenet.training import shapes

tf = da.tf

ROWS = 5  # padded box rows in these tests (shapes has at most 4 objects)
IMAGE = tf.TensorSpec([None, None, 3], tf.uint8)
BOXES, LABELS = tf.TensorSpec([ROWS, 4], tf.float32), tf.TensorSpec([ROWS], tf.int32)
MASK, SEED = tf.TensorSpec([None, None], tf.uint8), tf.TensorSpec([2], tf.int64)


def _detection(fn):
    return tf.function(lambda image, boxes, labels, mask, seed: fn(image, boxes, labels, seed, mask),
                       input_signature=(IMAGE, BOXES, LABELS, MASK, SEED))


def _as_dict(result):
    if isinstance(result, dict):
        return {k: v.numpy() for k, v in result.items()}
    image, boxes, labels, mask = result
    return {"image": image.numpy(), "boxes": boxes.numpy(), "labels": labels.numpy(), "mask": mask.numpy(),
            "box_mask": labels.numpy() > 0}


DETECTION = {
    "iou_crop": _detection(da.random_iou_crop),
    "zoom_out": _detection(lambda i, b, l, s, m: da.random_zoom_out(i, b, l, s, m, p=0.8)),
    "flip": _detection(da.random_horizontal_flip),
    "ssdlite_train": _detection(lambda i, b, l, s, m: da.ssdlite_train(i, b, l, s, 320, mask=m)),
    "ssd_train": _detection(lambda i, b, l, s, m: da.ssd_train(i, b, l, s, 300, mask=m)),
    "eval": _detection(lambda i, b, l, s, m: da.detection_eval(i, b, l, (240, 320), mask=m)),
}
SEGMENTATION_TRAIN = tf.function(lambda image, mask, seed: da.segmentation_train(image, mask, seed, 96, 112),
                                 input_signature=(IMAGE, MASK, SEED))
SEGMENTATION_EVAL = tf.function(lambda image, mask: da.segmentation_eval(image, mask, 80),
                                input_signature=(IMAGE, MASK))


def seed(i, j=0):
    return tf.constant([i, j], tf.int64)


# ------------------------------------------------------------------------------------- a palette scene
# Axis-aligned rectangles in pure colours on a pure background: every pixel's colour says which object (or
# background, zoom-out fill, crop padding) it belongs to, and each box is exactly its object's pixel extent.
H, W = 96, 128
PALETTE = np.array([[30, 200, 90], [230, 40, 40], [40, 40, 230], [240, 240, 240], da.SSD_MEAN, [0, 0, 0]])
PALETTE_LABEL = np.array([0, 1, 2, 3, 0, 255])
RECTS = [[10, 12, 40, 40], [60, 20, 110, 44], [30, 55, 90, 85]]


def palette_scene():
    image = np.empty((H, W, 3), np.uint8)
    image[:] = PALETTE[0]
    mask = np.zeros((H, W), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(RECTS, 1):
        image[y1:y2, x1:x2], mask[y1:y2, x1:x2] = PALETTE[k], k
    boxes = np.zeros((ROWS, 4), np.float32)
    boxes[:3] = RECTS
    labels = np.array([1, 2, 3, 0, 0], np.int32)
    return image, boxes, labels, mask


def padded_shapes(example):
    boxes = np.zeros((ROWS, 4), np.float32)
    labels = np.zeros(ROWS, np.int32)
    k = len(example["labels"])
    boxes[:k], labels[:k] = example["boxes"], example["labels"]
    return example["image"], boxes, labels, example["instances"]


def check_boxes(out, exact: bool, tol: float = 1.01):
    """Valid boxes inside the image; padding rows zero; each valid box (row r) holds the pixels of instance
    r + 1 (within tol) and, when `exact` (rectangles), equals their extent."""
    boxes, labels, instances = out["boxes"], out["labels"], out["mask"]
    height, width = instances.shape
    valid = labels > 0
    np.testing.assert_array_equal(out["box_mask"], valid)
    assert (boxes[~valid] == 0).all()
    x1, y1, x2, y2 = boxes[valid].T
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= width).all() and (y2 <= height).all()
    assert (x2 - x1 >= 1).all() and (y2 - y1 >= 1).all()
    for row in np.nonzero(valid)[0]:
        ys, xs = np.nonzero(instances == row + 1)
        if not exact and not len(ys):  # an occluder may hide all of an object that a crop keeps
            continue
        assert len(ys), f"valid box {boxes[row]} without pixels"
        extent = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        box = boxes[row]
        assert (extent[:2] >= box[:2] - tol).all() and (extent[2:] <= box[2:] + tol).all(), (extent, box)
        if exact:
            np.testing.assert_allclose(extent, box, atol=tol)


def check_pixels(out, min_agreement=0.97):
    """Classify each pixel by its nearest palette colour: the mask must say the same almost everywhere
    (resampled borders may differ by a pixel)."""
    image, mask = out["image"].astype(np.float32), out["mask"]
    nearest = np.argmin(((image[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1), axis=-1)
    agreement = (PALETTE_LABEL[nearest] == mask).mean()
    assert agreement >= min_agreement, agreement


# ------------------------------------------------------------------------------------------------ shapes
def test_shapes_deterministic_and_splits_disjoint():
    a, b = shapes.generate("train", 7), shapes.generate("train", 7)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes()
    stacked = shapes.load("train", 40)
    for index in (0, 13, 39):
        one = shapes.generate("train", index)
        k = len(one["labels"])
        np.testing.assert_array_equal(stacked["image"][index], one["image"])
        np.testing.assert_array_equal(stacked["boxes"][index, :k], one["boxes"])
        assert stacked["box_mask"][index].sum() == k and (stacked["labels"][index, k:] == 0).all()
    digest = lambda image: hashlib.sha1(image.tobytes()).hexdigest()  # noqa: E731
    train = {digest(image) for image in stacked["image"]}
    validation = {digest(image) for image in shapes.load("validation", 40)["image"]}
    assert len(train) == 40 and len(validation) == 40 and not train & validation
    other_seed = shapes.generate("train", 7, seed=1)
    assert not np.array_equal(other_seed["image"], a["image"])
    assert shapes.generate("train", 3, image_size=160)["image"].shape == (160, 160, 3)
    with pytest.raises(ValueError, match="split"):
        shapes.generate("test", 0)


def test_shapes_masks_boxes_and_class_balance():
    data = shapes.load("train", 400)
    assert data["image"].shape == (400, 128, 128, 3) and data["boxes"].shape == (400, shapes.MAX_BOXES, 4)
    counts = data["box_mask"].sum(1)
    assert set(counts) == {1, 2, 3, 4}
    class_counts = np.bincount(data["labels"][data["box_mask"]], minlength=shapes.NUM_CLASSES)
    assert class_counts[0] == 0 and len(shapes.SHAPES_CLASSES) == 6
    assert class_counts[1:].min() > 0.75 * class_counts[1:].mean(), class_counts
    boxes = data["boxes"][data["box_mask"]]
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() < 20 and sides.max() > 60  # small and large objects
    for i in range(400):
        k = counts[i]
        mask, instances, labels = data["mask"][i], data["instances"][i], data["labels"][i, :k]
        # the semantic mask is the class of the instance map, and nothing else
        np.testing.assert_array_equal(mask, np.concatenate([[0], labels])[instances])
        assert instances.max() <= k
        out = {"boxes": data["boxes"][i], "labels": data["labels"][i], "mask": instances,
               "box_mask": data["box_mask"][i]}
        check_boxes(out, exact=False, tol=0)
        for row in range(k):
            x1, y1, x2, y2 = data["boxes"][i, row]
            visible = (instances == row + 1).sum() / ((x2 - x1) * (y2 - y1))
            assert 0.15 <= visible <= 1.0, (i, row, visible)
        # the top-most object is whole: its pixels span its box exactly
        ys, xs = np.nonzero(instances == k)
        np.testing.assert_array_equal([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], data["boxes"][i, k - 1])


# ------------------------------------------------------------------------------------ detection transforms
@pytest.mark.parametrize("name", list(DETECTION))
def test_detection_transforms_keep_boxes_masks_and_pixels_aligned(name):
    fn = DETECTION[name]
    scene = palette_scene()
    outputs = []
    for i in range(12):
        out = _as_dict(fn(*scene, seed(i)))
        check_boxes(out, exact=True)
        if name != "ssd_train":  # the photometric distortion changes the colours
            check_pixels(out)
        outputs.append(out)
    for i in range(8):  # shapes (rotated, occluded): each visible part lies inside its box
        example = padded_shapes(shapes.generate("validation", i))
        check_boxes(_as_dict(fn(*example, seed(100 + i))), exact=False)
    if name != "eval":  # random: seeds give different results, and at least one box is always kept
        assert len({o["image"].tobytes() for o in outputs}) >= (2 if name == "flip" else 6)
        assert all(o["box_mask"].any() for o in outputs)
    if name in ("ssdlite_train", "ssd_train", "eval"):
        shape = (240, 320, 3) if name == "eval" else (320, 320, 3) if name == "ssdlite_train" else (300, 300, 3)
        assert all(o["image"].shape == shape and o["mask"].shape == shape[:2] for o in outputs)
    if name == "zoom_out":  # the canvas is SSD's mean colour with mask 0
        zoomed = [o for o in outputs if o["image"].shape != (H, W, 3)]
        assert zoomed and all((o["image"][0, 0] == da.SSD_MEAN).all() or (o["image"][-1, -1] == da.SSD_MEAN).all()
                              for o in zoomed)


def test_same_seed_same_output_and_static_shapes():
    scene = palette_scene()
    for name, fn in DETECTION.items():
        a, b = _as_dict(fn(*scene, seed(5, 9))), _as_dict(fn(*scene, seed(5, 9)))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
    # the recipes' outputs have static shapes, whatever the input size: they batch
    for name in ("ssdlite_train", "ssd_train", "eval"):
        outputs = DETECTION[name].get_concrete_function().structured_outputs
        assert all(v.shape.is_fully_defined() for v in outputs.values()), name
        assert outputs["boxes"].shape == (ROWS, 4) and outputs["box_mask"].shape == (ROWS,)
    for fn in (SEGMENTATION_TRAIN, SEGMENTATION_EVAL):
        assert all(v.shape.is_fully_defined() for v in fn.get_concrete_function().structured_outputs.values())


def test_horizontal_flip_is_the_mirror():
    image, boxes, labels, mask = palette_scene()
    out = _as_dict(da.horizontal_flip(tf.constant(image), boxes, labels, tf.constant(mask)))
    np.testing.assert_array_equal(out["image"], image[:, ::-1])
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    np.testing.assert_array_equal(out["boxes"][:3], np.stack([W - boxes[:3, 2], boxes[:3, 1], W - boxes[:3, 0],
                                                              boxes[:3, 3]], axis=1))
    assert (out["boxes"][3:] == 0).all()
    flips = [_as_dict(DETECTION["flip"](image, boxes, labels, mask, seed(i))) for i in range(16)]
    flipped = [np.array_equal(f["image"], image[:, ::-1]) for f in flips]
    assert all(f or np.array_equal(o["image"], image) for f, o in zip(flipped, flips)) and 3 <= sum(flipped) <= 13


def test_pad_and_sanitize_boxes():
    boxes, labels = da.pad_boxes(tf.constant([[1.0, 2, 5, 6], [0, 0, 3, 3]]), tf.constant([3, 1]), 4)
    np.testing.assert_array_equal(labels, [3, 1, 0, 0])
    assert boxes.shape == (4, 4) and (boxes.numpy()[2:] == 0).all()
    boxes, labels = da.pad_boxes(tf.zeros((6, 4)), tf.ones(6, tf.int32), 4)
    assert boxes.shape == (4, 4) and labels.shape == (4,)
    boxes, labels = da.sanitize_boxes([[0, 0, 0.5, 4], [1, 1, 3, 3], [2, 2, 11, 5], [1, 1, 2, 2]], [1, 2, 3, 0],
                                      10, 10)
    np.testing.assert_array_equal(labels, [0, 2, 0, 0])
    assert (boxes.numpy()[[0, 2, 3]] == 0).all()
    # an image without boxes: no IoU crop (torchvision waits for the no-crop option), just the resize
    image, _, _, mask = palette_scene()
    out = _as_dict(DETECTION["ssdlite_train"](image, np.zeros((ROWS, 4), np.float32), np.zeros(ROWS, np.int32),
                                              mask, seed(0)))
    assert not out["box_mask"].any() and (out["boxes"] == 0).all()
    np.testing.assert_array_equal(np.unique(out["mask"]), [0, 1, 2, 3])  # the whole scene, maybe flipped


# ---------------------------------------------------------------------------------- segmentation transforms
def test_segmentation_train_and_eval_keep_masks_aligned():
    image, _, _, mask = palette_scene()
    sizes, outputs = set(), []
    for i in range(16):
        out = {k: v.numpy() for k, v in SEGMENTATION_TRAIN(image, mask, seed(i)).items()}
        assert out["image"].shape == (112, 112, 3) and out["mask"].shape == (112, 112)
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3, 255}
        pad = out["mask"] == 255  # padding: black image, ignored mask, only at the bottom/right
        assert (out["image"][pad] == 0).all()
        check_pixels(out)
        outputs.append(out)
        sizes.add(int(pad.any()))
    assert sizes == {0, 1}  # base 96: shorter side 48..192, so crops of 112 are sometimes padded
    assert len({o["mask"].tobytes() for o in outputs}) == 16
    again = SEGMENTATION_TRAIN(image, mask, seed(3))
    np.testing.assert_array_equal(again["image"], outputs[3]["image"])
    # RandomResize's sizes: the shorter side uniform in [min, max], the longer int(short * long / short_side)
    geometry = tf.function(lambda h, w, s: da.segmentation_geometry(h, w, s, 40, 60, 30, 0.5))
    shorts = set()
    for i in range(40):
        drawn = geometry(H, W, seed(i))
        h, w = int(drawn.height), int(drawn.width)
        shorts.add(h)
        assert 40 <= h <= 60 and w == int(h * W / H)
    assert len(shorts) >= 12
    tall = geometry(50, 30, seed(0))
    assert int(tall.width) in range(40, 61) and int(tall.height) == int(int(tall.width) * 50 / 30)
    out = {k: v.numpy() for k, v in SEGMENTATION_EVAL(image, mask).items()}
    assert out["image"].shape == (80, 80, 3)
    check_pixels(out)


def test_segmentation_crop_is_the_whole_resize_flipped_padded_and_cropped():
    """resize_flip_crop computes only the crop; it gives what the reference's steps give one after the other:
    the whole image resized (Pillow's arithmetic, `resample`; the mask by tf.image.resize's nearest), flipped,
    padded bottom/right (0 / 255) and cropped, for wide and tall images, flipped or not, padded or not."""
    from flax_mobilenet.training import resample

    rng = np.random.default_rng(0)
    run = tf.function(lambda im, m, g, crop: da.resize_flip_crop(im, m, g, crop))
    seen = set()
    for i, (height, width, crop) in enumerate([(60, 90, 48), (90, 60, 48), (61, 47, 64)] * 6):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = rng.integers(0, 21, (height, width), dtype=np.uint8)
        drawn = da.segmentation_geometry(height, width, seed(i), 30, 90, crop, 0.5)
        new_h, new_w, flip, top, left = (int(v) for v in drawn)
        whole = resample.resize_bilinear(image, new_h, new_w)
        whole_mask = tf.image.resize(mask[..., None], (new_h, new_w), "nearest")[..., 0].numpy()
        if flip:
            whole, whole_mask = whole[:, ::-1], whole_mask[:, ::-1]
        pad = ((0, max(crop - new_h, 0)), (0, max(crop - new_w, 0)))
        whole = np.pad(whole, pad + ((0, 0),))[top:top + crop, left:left + crop]
        whole_mask = np.pad(whole_mask, pad, constant_values=255)[top:top + crop, left:left + crop]
        ours_image, ours_mask = run(image, mask, drawn, crop)
        np.testing.assert_array_equal(ours_image, whole, err_msg=f"case {i}")
        np.testing.assert_array_equal(ours_mask, whole_mask, err_msg=f"case {i}")
        seen.add((flip, pad != ((0, 0), (0, 0))))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


# --------------------------------------------------------------------------------- against torchvision
def _torchvision():
    from torch_reference import torch  # fails loudly when PyTorch is missing (CI installs it)
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    return torch, tv_tensors, v2


class _Rejected(Exception):
    pass


@pytest.mark.torch
def test_iou_crop_trials_and_crop_match_torchvision(monkeypatch):
    """One RandomIoUCrop trial at a time, with the same uniforms fed to torchvision (torch.rand patched): the
    same accept/reject decision, crop and boxes kept; and applying the crop gives torchvision's image and
    boxes after SanitizeBoundingBoxes."""
    torch, tv_tensors, v2 = _torchvision()
    rng = np.random.default_rng(0)
    scalar, draw = tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.float32)
    candidates = tf.function(lambda b, l, h, w, m, s, p: da.iou_crop_candidates(b, l, h, w, m, s, p),
                             input_signature=(BOXES, LABELS, scalar, scalar, tf.TensorSpec([], tf.float32), draw, draw))
    apply = tf.function(lambda image, b, l, *params: da.apply_iou_crop(image, b, l, None, True, *params),
                        input_signature=(IMAGE, BOXES, LABELS) + (scalar,) * 4 + (tf.TensorSpec([ROWS], tf.bool),))
    accepted = 0
    for case in range(100):
        height, width = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        count = int(rng.integers(1, ROWS + 1))
        corners = rng.uniform(0, 1, (count, 2, 2)) * [width, height]
        boxes = np.zeros((ROWS, 4), np.float32)
        boxes[:count] = np.concatenate([corners.min(1), corners.max(1) + 0.5], axis=1)
        boxes[:count, 2:] = np.minimum(boxes[:count, 2:], [width, height])
        labels = np.zeros(ROWS, np.int32)
        labels[:count] = rng.integers(1, 9, count)
        min_iou = float(rng.choice(da.IOU_CROP_OPTIONS[:-1]))
        draws = rng.uniform(0, 1, (2, 2)).astype(np.float32)
        ok, top, left, crop_h, crop_w = (x.numpy() for x in candidates(
            boxes, labels, height, width, min_iou, draws[0], draws[1]))

        queue = [torch.from_numpy(draws[0]), torch.from_numpy(draws[1])]
        randint_calls = []

        def fake_randint(*args, **kwargs):
            if randint_calls:
                raise _Rejected
            randint_calls.append(1)
            return torch.tensor([0])

        monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: queue.pop(0))
        monkeypatch.setattr(torch, "randint", fake_randint)
        transform = v2.RandomIoUCrop(sampler_options=[min_iou], trials=1)
        tv_boxes = tv_tensors.BoundingBoxes(torch.from_numpy(boxes[:count]), format="XYXY",
                                            canvas_size=(height, width))
        try:
            params = transform.make_params([tv_tensors.Image(torch.zeros(3, height, width)), tv_boxes])
        except _Rejected:
            params = None
        monkeypatch.undo()
        assert bool(ok) == (params is not None), case
        if params is None:
            continue
        accepted += 1
        assert (top, left, crop_h, crop_w) == (params["top"], params["left"], params["height"], params["width"])
        within = da.crop_within(tf.constant(boxes), tf.constant(labels), top, left, crop_h, crop_w).numpy()
        np.testing.assert_array_equal(within[:count], params["is_within_crop_area"].numpy())
        assert not within[count:].any()
        # the crop itself, then sanitize, against torchvision's
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        out_image, out_boxes, out_labels, _ = apply(image, boxes, labels, top, left, crop_h, crop_w, within)
        tv_image = transform.transform(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), params)
        np.testing.assert_array_equal(out_image.numpy(), tv_image.permute(1, 2, 0).numpy())
        cropped = v2.SanitizeBoundingBoxes(labels_getter=lambda inputs: inputs[1])(
            (transform.transform(tv_boxes, params), torch.from_numpy(labels[:count])))
        kept = out_labels.numpy() > 0
        np.testing.assert_allclose(out_boxes.numpy()[kept], cropped[0].numpy(), atol=1e-5)
        np.testing.assert_array_equal(out_labels.numpy()[kept], cropped[1].numpy())
    assert 15 <= accepted <= 85, accepted


@pytest.mark.torch
def test_iou_crop_distribution_matches_torchvision():
    """The bounded number of rounds does not show: the chance of no crop, the crop sizes and the number of
    boxes kept are those of torchvision's RandomIoUCrop (an unbounded loop); 2000 draws here, 300 there."""
    torch, tv_tensors, v2 = _torchvision()
    boxes = np.zeros((ROWS, 4), np.float32)
    boxes[:4] = RECTS + [[8, 6, 120, 90]]
    labels = np.array([1, 2, 3, 4, 0], np.int32)

    @tf.function
    def ours(seeds):
        def one(s):
            do_crop, _, _, crop_h, crop_w, within = da.sample_iou_crop(boxes, labels, H, W, s)
            return tf.stack([tf.cast(do_crop, tf.float32), tf.cast(crop_h * crop_w, tf.float32) / (H * W),
                             tf.reduce_sum(tf.cast(within, tf.float32))])
        return tf.map_fn(one, seeds, fn_output_signature=tf.float32)

    n = 2000
    mine = ours(tf.stack([tf.fill([n], tf.constant(11, tf.int64)), tf.range(n, dtype=tf.int64)], 1)).numpy()
    torch.manual_seed(0)
    transform = v2.RandomIoUCrop()
    tv_boxes = tv_tensors.BoundingBoxes(torch.from_numpy(boxes[:4]), format="XYXY", canvas_size=(H, W))
    theirs = []
    for _ in range(300):
        params = transform.make_params([tv_tensors.Image(torch.zeros(3, H, W)), tv_boxes])
        theirs.append([1.0, params["height"] * params["width"] / (H * W), float(params["is_within_crop_area"].sum())]
                      if params else [0.0, 1.0, 0.0])
    theirs = np.array(theirs)
    # no crop: 1/7 of the draws (sd of the difference ~0.02); then the crops' areas and boxes kept
    assert abs(mine[:, 0].mean() - theirs[:, 0].mean()) < 0.065, (mine[:, 0].mean(), theirs[:, 0].mean())
    mine, theirs = mine[mine[:, 0] == 1], theirs[theirs[:, 0] == 1]
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(mine[:, 1], q) - np.quantile(theirs[:, 1], q)) < 0.06, q
    assert abs(mine[:, 2].mean() - theirs[:, 2].mean()) < 0.25, (mine[:, 2].mean(), theirs[:, 2].mean())


@pytest.mark.torch
def test_photometric_kernels_match_torchvision():
    torch, _, _ = _torchvision()
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    image[:6] = image[:6, :, :1]  # gray pixels: hue's max == min case
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for ours, theirs, factors in ((da.adjust_brightness, F.adjust_brightness, (0.875, 1.06, 1.125)),
                                  (da.adjust_contrast, F.adjust_contrast, (0.5, 0.83, 1.41)),
                                  (da.adjust_saturation, F.adjust_saturation, (0.5, 0.9, 1.49)),
                                  (da.adjust_hue, F.adjust_hue, (-0.05, -0.013, 0.0, 0.042))):
        for factor in factors:
            factor = float(np.float32(factor))  # torchvision draws float32 factors
            a = ours(tf.constant(image), factor).numpy().astype(int)
            b = theirs(tensor, factor).permute(1, 2, 0).numpy().astype(int)
            assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.005, (theirs.__name__, factor)
    # the random composition: deterministic per seed, mostly changes the image, never its shape
    distort = tf.function(lambda im, s: da.photometric_distort(im, s), input_signature=(IMAGE, SEED))
    results = [distort(image, seed(i)).numpy() for i in range(12)]
    np.testing.assert_array_equal(distort(image, seed(4)).numpy(), results[4])
    assert all(r.shape == image.shape for r in results)
    assert sum(not np.array_equal(r, image) for r in results) >= 8
