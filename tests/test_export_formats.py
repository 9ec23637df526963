"""ONNX (jax2onnx -> ONNX Runtime) and TFLite (jax2tf -> LiteRT) exports: checked before writing, and equal to apply.

Tests that need the converters are marked `export` (requirements-export.txt; the Python 3.13 CI leg has none)."""
import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import flax_mobilenet as fm
from flax_mobilenet.export import (ExportCheckError, MissingConverterError, export_model, load_exported)
from flax_mobilenet.export import onnx as onnx_export

ROOT = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 64, 5
_CACHE = {}


def model_and_variables(name, seed=0):
    """Random variables without compiling model.init (He-scaled kernels, non-trivial norms), cached per test module."""
    if (name, seed) not in _CACHE:
        model = fm.create_model(name, num_classes=CLASSES)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.float32))
        rng = np.random.default_rng(seed)

        def fill(path, leaf):
            name, shape = jax.tree_util.keystr(path), leaf.shape
            if "var" in name:
                return (0.5 + rng.random(shape)).astype(np.float32)
            if len(shape) == 1:
                return ((1.0 if "scale" in name or "gamma" in name else 0.0)
                        + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:-1]))).astype(np.float32)
        _CACHE[name, seed] = model, jax.tree_util.tree_map_with_path(fill, shapes), {}
    return _CACHE[name, seed][:2]


def expected_logits(model, variables, images):
    """model.apply (not folded), compiled once per model for a batch of 3."""
    compiled = next(entry[2] for entry in _CACHE.values() if entry[0] is model)
    if "apply" not in compiled:
        with jax.default_matmul_precision("highest"):
            compiled["apply"] = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images_like(3)).compile()
    padded = np.concatenate([images, np.zeros((3 - len(images), *images.shape[1:]), np.float32)])
    return np.asarray(compiled["apply"](variables, padded))[:len(images)]


def images_like(batch):
    return jax.ShapeDtypeStruct((batch, SIZE, SIZE, 3), np.float32)


def assert_close(got, expected):
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def images(batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, SIZE, SIZE, 3), dtype=np.float32)


# ShuffleNet: its max-pool stem is reformulated for ONNX; MobileViT: attention, LayerNorm, unfold/fold.
@pytest.mark.export
@pytest.mark.parametrize("name,batch_size", [("mobilenet_v3_small", None), ("shufflenet_v2_x1_0", 2),
                                             ("mobilevit_xxs", None)])
def test_onnx_export_is_checked_and_runs_in_onnxruntime(name, batch_size, tmp_path):
    model, variables = model_and_variables(name)
    export_model(name, variables, tmp_path, batch_size, image_size=SIZE, format="onnx", num_classes=CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "model.onnx"]  # no temporary files left
    metadata = json.loads((tmp_path / "export.json").read_text())
    assert (metadata["format"], metadata["artifact"], metadata["input"]["name"]) == ("onnx", "model.onnx", "images")
    assert metadata["input"]["shape"] == [batch_size or "batch", SIZE, SIZE, 3]
    assert metadata["input"]["layout"] == "NHWC"
    assert metadata["check"]["runtime"].startswith("onnxruntime ") and metadata["check"]["max_rel_diff"] <= 1e-4
    predict = load_exported(tmp_path)
    x = images(3)
    expected = expected_logits(model, variables, x)
    for batch in ((3, 1) if batch_size is None else (batch_size,)):
        assert_close(predict(x[:batch]), expected[:batch])


@pytest.mark.export
def test_tflite_export_has_a_fixed_batch_and_runs_in_litert(tmp_path):
    name = "mobilevit_xxs"  # its rank-4 Dense layers need the export's reformulation for the TFLite converter
    model, variables = model_and_variables(name)
    export_model(name, variables, tmp_path, batch_size=2, image_size=SIZE, format="tflite", num_classes=CLASSES)
    metadata = json.loads((tmp_path / "export.json").read_text())
    assert metadata["format"] == "tflite" and metadata["input"]["shape"] == [2, SIZE, SIZE, 3]
    assert "XNNPACK" in metadata["check"]["runtime"] and metadata["check"]["max_rel_diff"] <= 1e-4
    predict = load_exported(tmp_path)
    x = images(2)
    assert_close(predict(x), expected_logits(model, variables, x))
    with pytest.raises(ValueError, match=r"fixed batch"):
        predict(x[:1])


@pytest.mark.export
def test_export_cli_writes_a_checked_tflite_of_batch_1(tmp_path, capsys):
    name = "mobilenet_v3_small"
    model, variables = model_and_variables(name)
    fm.save_variables(tmp_path / "ckpt", variables, {"model": name, "num_classes": CLASSES})
    spec = importlib.util.spec_from_file_location("export_cli", ROOT / "export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    output = tmp_path / "out"
    assert cli.main(["--checkpoint", str(tmp_path / "ckpt"), "--output", str(output), "--format", "tflite",
                     "--image-size", str(SIZE)]) == 0, capsys.readouterr().err
    metadata = json.loads((output / "export.json").read_text())
    assert metadata["input"]["shape"] == [1, SIZE, SIZE, 3] and "fixed batch" in metadata["input"]["batch_note"]
    assert metadata["check"]["max_rel_diff"] <= 1e-4
    x = images(1)
    assert_close(load_exported(output)(x), expected_logits(model, variables, x))


@pytest.mark.export
def test_a_failing_check_raises_with_the_difference_and_writes_nothing(tmp_path, monkeypatch):
    name = "mobilenet_v3_small"
    _, variables = model_and_variables(name)
    load = onnx_export.load

    def off_by_a_little(data, names):
        run, runtime = load(data, names)
        return (lambda x: {name: value * 1.001 for name, value in run(x).items()}), runtime
    monkeypatch.setattr(onnx_export, "load", off_by_a_little)
    fresh, previous = tmp_path / "fresh", tmp_path / "previous"
    previous.mkdir()
    (previous / "export.json").write_text("an earlier export")
    for output in (fresh, previous):
        with pytest.raises(ExportCheckError, match=r"max\|diff\| / max\|logits\| = 0\.00(1|0999) > 0\.0001"):
            export_model(name, variables, output, image_size=SIZE, format="onnx", num_classes=CLASSES)
    assert not fresh.exists()
    assert [p.name for p in previous.iterdir()] == ["export.json"]
    assert (previous / "export.json").read_text() == "an earlier export"


@pytest.mark.parametrize("format,module", [("onnx", "jax2onnx"), ("tflite", "tensorflow")])
def test_a_missing_converter_names_the_pip_command(format, module, tmp_path, monkeypatch):
    variables = {}  # checked before the variables are looked at
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(MissingConverterError, match=rf"'{module}'.*pip install -r requirements-export\.txt"):
        export_model("mobilenet_v3_small", variables, tmp_path / "out", image_size=SIZE, format=format,
                     num_classes=CLASSES)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="TFLite's converter cannot convert the detection post-processing"):
        export_model("ssdlite320_mobilenet_v3_large", variables, tmp_path / "out", format="tflite")
    with pytest.raises(ValueError, match="unknown export format 'coreml'"):
        export_model("mobilenet_v3_small", variables, tmp_path / "out", format="coreml", num_classes=CLASSES)


def test_export_cli_names_a_wrong_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_cli", ROOT / "export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    weights = tmp_path / "mobilenet_v2.pth"
    weights.write_bytes(b"not a folder")
    assert cli.main(["--checkpoint", str(weights), "--output", str(tmp_path / "out")]) == 1
    message = capsys.readouterr().err
    assert "is a file, not a checkpoint" in message and "python convert_weights.py --model NAME" in message
    assert cli.main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 1
    assert f"no checkpoint at {tmp_path / 'missing'}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
