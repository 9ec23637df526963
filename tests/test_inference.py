"""compile_inference (BatchNorm folded, AOT) and the StableHLO export equal the plain model."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import flax_mobilenet as fm
from flax_mobilenet.export import export_model, load_exported


def random_variables(model, seed=0):
    """Initialised variables with non-trivial BatchNorm statistics and affine parameters."""
    variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(seed), np.zeros((1, 64, 64, 3), np.float32)))
    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return (0.5 + rng.random(leaf.shape)).astype(np.float32)
        if leaf.ndim == 1:
            return (leaf + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return leaf
    return jax.tree_util.tree_map_with_path(perturb, variables)


@pytest.mark.parametrize("name,overrides", [("mobilenet_v2", {}), ("mobilenet_v3_large", {"dilated": True}),
                                            ("mobilenet_v3_small", {"num_classes": 7}), ("mobilenet_v1", {})])
def test_compiled_folded_model_equals_model_apply(name, overrides):
    model = fm.create_model(name, **overrides)
    variables = random_variables(model)
    images = np.random.default_rng(1).standard_normal((2, 96, 80, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):  # GPUs default to TF32, which rounds the two forms apart
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
        predict = fm.compile_inference(name, variables, batch_size=2, image_size=(96, 80), **overrides)
        ours = np.asarray(predict(images))
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()


def test_compiled_function_names_a_wrong_shape():
    model = fm.create_model("mobilenet_v3_small")
    predict = fm.compile_inference("mobilenet_v3_small", random_variables(model), batch_size=1, image_size=64)
    with pytest.raises(ValueError, match=r"compiled for images of shape \(1, 64, 64, 3\)"):
        predict(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="no 'batch_stats'"):
        fm.fold_batchnorm({"params": {}}, 1e-5)


def test_exported_artifact_runs_without_model_code(tmp_path):
    model = fm.create_model("mobilenet_v3_small", num_classes=10)
    variables = random_variables(model, seed=2)
    export_model("mobilenet_v3_small", variables, tmp_path, image_size=64, num_classes=10)
    metadata = json.loads((tmp_path / "export.json").read_text())
    assert metadata["input"]["shape"] == ["batch", 64, 64, 3] and metadata["input"]["mean"] == [0.485, 0.456, 0.406]
    # the weights' eval transform (torchvision V3-Small: resize 256 / crop 224, bilinear) scaled to 64
    assert (metadata["input"]["resize_size"], metadata["input"]["interpolation"]) == (73, "bilinear")
    assert metadata["labels"] == "imagenet1k"
    images = np.random.default_rng(3).standard_normal((3, 64, 64, 3), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    script = f"""
import sys, numpy as np, jax
exported = jax.export.deserialize(bytearray(open({str(tmp_path / 'model.stablehlo')!r}, 'rb').read()))
logits = np.asarray(exported.call(np.load({str(tmp_path / 'images.npy')!r})))
assert not any(m.startswith(('flax_mobilenet', 'flax')) for m in sys.modules), 'model code was imported'
np.save({str(tmp_path / 'logits.npy')!r}, logits)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    expected = np.asarray(jax.jit(model.apply)(variables, images))
    logits = np.load(tmp_path / "logits.npy")
    assert logits.shape == (3, 10)
    assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()


def test_batch_is_split_over_cpu_devices_with_equal_results():
    script = """
import numpy as np
from flax_mobilenet.inference import split_cpu_into_devices
split_cpu_into_devices(2)
import jax, flax_mobilenet as fm
assert len(jax.devices()) == 2
model = fm.create_model("mobilenet_v3_small", num_classes=5)
variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
images = np.random.default_rng(0).standard_normal((4, 64, 64, 3), dtype=np.float32)
expected = np.asarray(jax.jit(model.apply)(variables, images))
for batch in (4, 3):
    got = np.asarray(fm.compile_inference("mobilenet_v3_small", variables, batch, 64, num_classes=5)(images[:batch]))
    assert np.abs(got - expected[:batch]).max() <= 1e-5 * np.abs(expected).max(), batch
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_cpu_compiler_options_keep_the_stem_convolution_out_of_ynnpack():
    """If this jaxlib stops accepting the options, compile_inference silently falls back: fail here instead."""
    from flax_mobilenet.inference import CPU_COMPILER_OPTIONS
    model = fm.create_model("mobilenet_v2", fold_bn=True, depthwise_impl="slices")  # the CPU form
    with jax.default_device(jax.devices("cpu")[0]):  # the options are XLA:CPU's, whatever the machine
        variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
        lowered = jax.jit(model.apply).lower(variables, np.zeros((1, 64, 64, 3), np.float32))
    entry = lambda text: text[text.index("ENTRY"):]  # noqa: E731  (fused computations come before it)
    assert "convolution(" not in entry(lowered.compile().as_text()), "default: YNNPACK no longer takes the stem?"
    assert "convolution(" in entry(lowered.compile(CPU_COMPILER_OPTIONS).as_text())


def test_keep_freed_host_memory_applies_on_glibc():
    import platform
    from flax_mobilenet.inference import keep_freed_host_memory
    assert keep_freed_host_memory() is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("name", ["mobilevit_xxs"])  # MobileNetV4 hybrids: checked by hand, 1.5e-6
def test_attention_models_export_with_any_batch(name, tmp_path):
    """Attention blocks reshape over the batch: the batch-polymorphic export must still equal apply."""
    model = fm.create_model(name, num_classes=5)
    variables = random_variables(model, seed=4)
    export_model(name, variables, tmp_path, image_size=64, num_classes=5)
    exported = load_exported(tmp_path)
    images = np.random.default_rng(4).standard_normal((3, 64, 64, 3), dtype=np.float32)
    with jax.default_matmul_precision("highest"):
        expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, images))
        for batch in (3, 1):
            ours = np.asarray(exported(images[:batch]))
            assert ours.shape == (batch, 5)
            assert np.abs(ours - expected[:batch]).max() <= 1e-5 * np.abs(expected).max()
