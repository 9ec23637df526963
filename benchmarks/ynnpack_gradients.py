"""float32 gradients of one V3-Small training step on XLA:CPU against a float64 reference (README, "Numerics on
XLA:CPU"): default flags, YNNPACK for dots only, 8 CPU devices, and op by op.

    python benchmarks/ynnpack_gradients.py [--keep DIR] [--no-eager]   # each mode in its own process (XLA_FLAGS)
    YNN_CHECK_INIT_FROM=runs/digits python benchmarks/ynnpack_gradients.py   # a trained state instead of init
    YNN_CHECK_PIPELINE=1 python benchmarks/ynnpack_gradients.py   # the trainer's first (augmented) batch

MobileNetV3-Small (10 classes, no dropout) on a batch of 32 `digits` images (8x8 upscaled to 32x32), train mode
(batch statistics), mean cross-entropy; the error of a gradient leaf is max|g32 - g64| / max|g64|.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

MODES = {
    "default (1 device)": "",
    "ynn_fusion_type=dot (1 device)": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "8 CPU devices": "--xla_force_host_platform_device_count=8",
    "op by op (jax.disable_jit)": "",
}
BATCH, SIZE = 32, 32


def _batch():
    import numpy as np

    if os.environ.get("YNN_CHECK_PIPELINE"):  # the trainer's first augmented batch of configs/v3_small_digits.py
        import importlib.util

        from flax_mobilenet.training.experiment import Experiment
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "v3_small_digits.py")
        spec = importlib.util.spec_from_file_location("digits_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        batch = next(Experiment(module.get_config()).pipeline.train_batches(global_batch_size=BATCH,
                                                                            process_index=0, process_count=1))
        return batch["image"].astype(np.float64), batch["label"].astype(np.int32)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[:BATCH] / 16.0  # [0, 1]
    images = np.repeat(np.repeat(images, SIZE // 8, axis=1), SIZE // 8, axis=2)[..., None].repeat(3, axis=-1)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((images - mean) / std).astype(np.float64), digits.target[:BATCH].astype(np.int32)


def _grads(dtype_name: str, mode: str):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import flax_mobilenet as fm

    dtype = jnp.dtype(dtype_name)
    model = fm.create_model("mobilenet_v3_small", num_classes=10, dropout=0.0, dtype=dtype)
    images, labels = _batch()
    init_from = os.environ.get("YNN_CHECK_INIT_FROM")  # a digits training workdir: its best step's variables
    variables = (fm.load_variables(init_from) if init_from else
                 model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3), jnp.float32)))
    variables = jax.tree.map(lambda v: jnp.asarray(v, dtype), variables)
    x = jnp.asarray(images, dtype)

    def loss_fn(params, x, labels):
        logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                      mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    grad_fn = jax.grad(loss_fn, has_aux=True)  # as the train step: the new BatchNorm statistics are outputs too
    if mode == "8 CPU devices":
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        x, labels = jax.device_put(x, shard), jax.device_put(jnp.asarray(labels), shard)
    if mode.startswith("op by op"):
        with jax.disable_jit():
            grads, _ = grad_fn(variables["params"], x, jnp.asarray(labels))
        seconds = float("nan")
    else:
        step = jax.jit(grad_fn)
        grads, _ = jax.block_until_ready(step(variables["params"], x, labels))
        start = time.perf_counter()
        for _ in range(3):
            grads, _ = jax.block_until_ready(step(variables["params"], x, labels))
        seconds = (time.perf_counter() - start) / 3
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(g, np.float64)
            for path, g in jax.tree_util.tree_leaves_with_path(grads)}
    return flat, seconds, jax.device_count()


def _child(dtype_name: str, mode: str, out: str) -> None:
    if dtype_name == "float64":
        import jax
        jax.config.update("jax_enable_x64", True)
    import numpy as np
    flat, seconds, devices = _grads(dtype_name, mode)
    np.savez(out, **flat)
    with open(out + ".json", "w") as f:
        json.dump({"seconds": seconds, "devices": devices}, f)


def _run(dtype_name: str, mode: str, flags: str, out: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    subprocess.run([sys.executable, __file__, "--child", dtype_name, mode, out], env=env, check=True)
    with open(out + ".json") as f:
        return json.load(f)


def report(reference: dict, ours: dict) -> str:
    """Per-leaf max|g32 - g64| / max|g64| over the leaves whose gradient is not ~0 (a BatchNorm bias feeding
    straight into the next BatchNorm has an exactly-zero true gradient), and the worst of the first layers."""
    import numpy as np

    scale = {k: float(np.abs(g).max()) for k, g in reference.items()}
    significant = [k for k in reference if scale[k] >= 1e-4 * max(scale.values())]
    errors = {k: float(np.abs(ours[k] - reference[k]).max()) / scale[k] for k in significant}
    norm = float(np.sqrt(sum(np.sum((ours[k] - reference[k]) ** 2) for k in reference))
                 / np.sqrt(sum(np.sum(reference[k] ** 2) for k in reference)))
    worst = max(errors, key=errors.get)
    early = [k for k in significant if k.split("/")[0] in ("features_0", "features_1", "features_2")]
    return (f"max rel err {errors[worst]:.1e} ({worst}), features_0-2 {max(errors[k] for k in early):.1e}, "
            f"median {np.median(list(errors.values())):.1e} ({len(significant)}/{len(reference)} leaves), "
            f"|g32-g64|/|g64| (whole tree) {norm:.1e}")


def main() -> None:
    import jax
    import jaxlib
    import numpy as np

    keep = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else None
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or tmp
        os.makedirs(folder, exist_ok=True)
        _run("float64", "default (1 device)", "", f"{folder}/ref.npz")
        reference = dict(np.load(f"{folder}/ref.npz"))
        for i, (mode, flags) in enumerate(MODES.items()):
            if mode.startswith("op by op") and "--no-eager" in sys.argv:  # minutes: every op dispatched alone
                continue
            info = _run("float32", mode, flags, f"{folder}/{i}.npz")
            ours = dict(np.load(f"{folder}/{i}.npz"))
            print(f"{mode:32s} devices={info['devices']} step {info['seconds']:.3f} s  {report(reference, ours)}",
                  flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
