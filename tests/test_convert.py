"""Strict conversion: every wrong checkpoint is refused with a message naming the problem."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from torch_reference import randomize_, torch, torch_forward, tv_models

import flax_mobilenet as fm
from flax_mobilenet.convert import ConversionError, read_state_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def v3_small():
    return randomize_(tv_models.mobilenet_v3_small(), seed=1)


@pytest.fixture(scope="module")
def state_dict(v3_small):
    return {k: v.clone() for k, v in v3_small.state_dict().items()}


def test_missing_key_is_named(state_dict):
    broken = dict(state_dict)
    del broken["features.4.block.2.fc1.bias"]
    with pytest.raises(ConversionError, match=r"1 missing keys:\n  features.4.block.2.fc1.bias"):
        fm.convert_state_dict("mobilenet_v3_small", broken)


def test_unexpected_key_is_named(state_dict):
    broken = dict(state_dict, **{"features.99.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match=r"1 unexpected keys:\n  features.99.weight"):
        fm.convert_state_dict("mobilenet_v3_small", broken)


def test_wrong_shape_names_both_shapes(state_dict):
    broken = dict(state_dict, **{"features.1.block.0.0.weight": torch.zeros(16, 1, 5, 5)})
    with pytest.raises(ConversionError, match=r"features.1.block.0.0.weight: checkpoint has \(16, 1, 5, 5\), "
                                              r"mobilenet_v3_small expects \(16, 1, 3, 3\)"):
        fm.convert_state_dict("mobilenet_v3_small", broken)


def test_wrong_model_is_recognised(state_dict):
    with pytest.raises(ConversionError, match="this looks like a mobilenet_v3_small checkpoint") as error:
        fm.convert_state_dict("mobilenet_v3_large", state_dict)
    assert "missing keys" not in str(error.value)  # one clear sentence, not 200 key errors


def test_wrong_variant_and_layout_are_recognised(state_dict):
    with pytest.raises(ConversionError, match=r"mobilenet_v3_small \(reduced_tail=False\) checkpoint"):
        fm.convert_state_dict("mobilenet_v3_small", state_dict, reduced_tail=True)
    with pytest.raises(ConversionError, match="takes timm checkpoints, this one has the torchvision key layout"):
        fm.convert_state_dict("mobilenetv3_small_100", state_dict)


def test_wrong_num_classes_gets_a_hint(state_dict):
    with pytest.raises(ConversionError, match="its classifier has 1000 classes, not num_classes=10"):
        fm.convert_state_dict("mobilenet_v3_small", state_dict, num_classes=10)


def test_not_a_mobilenet():
    with pytest.raises(ConversionError, match="not a torchvision, timm or ultralytics checkpoint"):
        fm.convert_state_dict("mobilenet_v2", {"fc.weight": np.zeros((2, 2))})


def test_wrapped_and_numpy_state_dicts_convert(state_dict, v3_small):
    as_numpy = {"module." + k: v.numpy() for k, v in state_dict.items()}
    variables = fm.convert_state_dict("mobilenet_v3_small", {"state_dict": as_numpy})
    images = np.random.default_rng(0).standard_normal((1, 64, 64, 3), dtype=np.float32)
    logits = jax.jit(fm.create_model("mobilenet_v3_small").apply)(variables, images)
    np.testing.assert_allclose(logits, torch_forward(v3_small, images), rtol=0, atol=1e-4 * np.abs(logits).max())


def test_num_batches_tracked_is_dropped_and_bn_stats_land_in_batch_stats(state_dict):
    variables = fm.convert_state_dict("mobilenet_v3_small", state_dict)
    bn = variables["batch_stats"]["features_0"]["bn"]
    np.testing.assert_array_equal(bn["mean"], state_dict["features.0.1.running_mean"].numpy())
    np.testing.assert_array_equal(bn["var"], state_dict["features.0.1.running_var"].numpy())
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    assert not any("num_batches" in jax.tree_util.keystr(path) for path, _ in leaves)
    expected = jax.eval_shape(fm.create_model("mobilenet_v3_small").init, jax.random.key(0),
                              np.zeros((1, 64, 64, 3), np.float32))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda x: x.shape, expected)


def test_truncated_file_is_refused(tmp_path, state_dict):
    path = tmp_path / "model.pth"
    torch.save(state_dict, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint"):
        read_state_dict(path)
    safetensors_path = tmp_path / "model.safetensors"
    safetensors_path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(ConversionError, match="not a readable safetensors file"):
        read_state_dict(safetensors_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/flax_mobilenet_pwned",))


def test_code_carrying_pickle_is_refused_and_not_run(tmp_path, state_dict):
    marker = Path("/tmp/flax_mobilenet_pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(state_dict), "payload": _RunsCode()}, path)
    legacy = tmp_path / "evil_legacy.pt"
    legacy.write_bytes(pickle.dumps({"payload": _RunsCode()}))
    for file in (path, legacy):
        with pytest.raises(ConversionError, match="refused to load"):
            read_state_dict(file)
    assert not marker.exists()


def test_safetensors_round_trip_and_cli(tmp_path, state_dict, v3_small):
    from safetensors.torch import save_file
    source = tmp_path / "v3s.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(source))
    output = tmp_path / "converted"
    run = subprocess.run([sys.executable, str(ROOT / "convert_weights.py"), "--model", "mobilenet_v3_small",
                          "--input", str(source), "--output", str(output)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert '"model": "mobilenet_v3_small"' in run.stdout
    variables = fm.load_variables(output)
    images = np.random.default_rng(2).standard_normal((2, 65, 80, 3), dtype=np.float32)
    logits = jax.jit(fm.create_model("mobilenet_v3_small").apply)(variables, images)
    np.testing.assert_allclose(logits, torch_forward(v3_small, images), rtol=0, atol=1e-4 * np.abs(logits).max())

    again = subprocess.run([sys.executable, str(ROOT / "convert_weights.py"), "--model", "mobilenet_v3_small",
                            "--input", str(source), "--output", str(output)], capture_output=True, text=True)
    assert again.returncode == 1 and "already holds a checkpoint" in again.stderr
    wrong = subprocess.run([sys.executable, str(ROOT / "convert_weights.py"), "--model", "mobilenet_v2",
                            "--input", str(source), "--output", str(tmp_path / "x")], capture_output=True, text=True)
    assert wrong.returncode == 1
    assert "this looks like a mobilenet_v3_small checkpoint" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_an_unfinished_training_run_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="holds no finished checkpoint yet"):
        fm.load_variables(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint: expected variables/"):
        fm.load_variables(tmp_path / "checkpoints")
