"""The `precision` option of compile_inference, export_model, predict.py and export.py: it reaches the compiled
convs and matmuls, it is 'highest' by default (float64-close on every backend), and a bad value says what to use."""
import importlib.util
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_mobilenet as fm
from flax_mobilenet.export import export_model
from flax_mobilenet.inference import folded_model
from test_inference import random_variables

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def variables():
    return random_variables(fm.create_model("mobilenet_v3_small", num_classes=10))


def load_cli(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli_precision", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def precisions_of_products(hlo: str) -> set[str]:
    """The operand precision of every convolution and dot in an HLO module's text ('' where it is the default)."""
    ops = [line for line in hlo.splitlines() if re.search(r"= \S+ (convolution|dot)\(", line)]
    assert ops, "no convolution or dot in the module"
    found = [re.search(r"operand_precision=\{(\w+),", line) for line in ops]
    return {match.group(1) if match else "" for match in found}


def test_the_precision_reaches_every_conv_and_matmul_of_the_compiled_function(variables):
    default = fm.compile_inference("mobilenet_v3_small", variables, 1, SIZE, num_classes=10)
    assert precisions_of_products(default.compiled.as_text()) == {"highest"}
    fast = fm.compile_inference("mobilenet_v3_small", variables, 1, SIZE, precision="default", num_classes=10)
    assert precisions_of_products(fast.compiled.as_text()) == {""}
    with pytest.raises(ValueError, match=r"unknown precision 'fast'; use one of 'highest': full float32"):
        fm.compile_inference("mobilenet_v3_small", variables, 1, SIZE, precision="fast", num_classes=10)


def test_highest_is_within_1e_5_of_float64(variables):
    """On CPU every level computes full float32; on GPUs and TPUs this holds at 'highest' only."""
    name = "mobilenet_v3_small"
    images = np.random.default_rng(1).standard_normal((1, SIZE, SIZE, 3), dtype=np.float32)
    ours = np.asarray(fm.compile_inference(name, variables, 1, SIZE, num_classes=10)(images), np.float64)
    with jax.enable_x64(True):  # every conv, norm and activation in float64; the logits rounded to float32 last
        model, folded = folded_model(name, variables, dtype=jnp.float64, num_classes=10)
        folded = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), folded)
        reference = np.asarray(jax.jit(model.apply)(folded, jnp.asarray(images, jnp.float64)), np.float64)
    assert np.abs(ours - reference).max() < 1e-5 * np.abs(reference).max()


def test_the_stablehlo_export_records_its_precision_and_onnx_takes_highest_only(variables, tmp_path):
    export_model("mobilenet_v3_small", variables, tmp_path / "fast", image_size=SIZE, precision="default",
                 num_classes=10)
    assert json.loads((tmp_path / "fast" / "export.json").read_text())["precision"] == "default"
    module = jax.export.deserialize(bytearray((tmp_path / "fast" / "model.stablehlo").read_bytes())).mlir_module()
    assert "HIGHEST" not in module and "stablehlo.convolution" in module
    with pytest.raises(ValueError, match=r"^precision 'high' applies to the StableHLO export only: .* keep precision "
                                         r"'highest' \(the default\) or export --format stablehlo$"):
        export_model("mobilenet_v3_small", variables, tmp_path / "onnx", format="onnx", precision="high")
    assert not (tmp_path / "onnx").exists()


def test_the_clis_take_precision_and_name_the_choices_of_a_bad_one(variables, tmp_path, capsys, monkeypatch):
    from PIL import Image

    checkpoint = tmp_path / "ckpt"
    fm.save_variables(checkpoint, variables, {"model": "mobilenet_v3_small", "num_classes": 10})
    image = tmp_path / "digit.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    predict = load_cli("predict")
    asked = []

    def fake_compile(name, variables, *args, precision, **kwargs):  # which precision predict.py asks for
        asked.append(precision)
        return lambda x: np.zeros((len(x), 10), np.float32)
    monkeypatch.setattr(predict, "compile_inference", fake_compile)
    monkeypatch.setattr(predict, "enable_compilation_cache", lambda: None)
    argv = ["--checkpoint", str(checkpoint), "--image-size", "32", str(image)]
    assert predict.main(argv) == 0 and predict.main([*argv, "--precision", "default"]) == 0
    assert asked == ["highest", "default"]
    capsys.readouterr()
    for cli, argv in ((predict, argv), (load_cli("export"), ["--checkpoint", str(checkpoint), "--output", "x"])):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--precision", "fast"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(
            "error: argument --precision: invalid choice: 'fast' (choose from 'highest', 'high', 'default')")
    export = load_cli("export")
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "tflite"), "--format", "tflite",
                        "--precision", "default"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: precision 'default' applies to the StableHLO export only: a tflite file holds plain float32 convs "
        "and matmuls, and its runtime chooses their arithmetic; keep precision 'highest' (the default) or export "
        "--format stablehlo")
