"""Training throughput: flax-mobilenet's train step vs PyTorch eager training the torchvision model.

One step is forward + backward + SGD (momentum 0.9, coupled weight decay) on a batch of random
224x224 images with 1000 classes, BatchNorm in train mode, dropout on.  Ours is
`training.steps.train_step` with the optimizer of `training.optim` (SGD chain equal to
torch.optim.SGD), jitted with the state donated, as the trainer runs it on one device.  PyTorch
runs the same torchvision definition with torch.optim.SGD and CrossEntropyLoss.  The frameworks
alternate round by round (ours, PyTorch, ours, ...), the warm-up steps are not timed, and we report
the median step time, images/s and the ratio of throughputs.

CPU: fp32, all threads for both.  GPU: ours in bfloat16 (the trainer's `half_precision`: bf16
compute, fp32 params and optimizer state) with depthwise convs as strided slices and as XLA's
grouped conv, against PyTorch AMP (torch.autocast bf16 by default, `--torch-amp fp16` adds a
GradScaler) in channels_last with cudnn.benchmark.  Data lives on the device before timing.

    python benchmarks/training.py [--device cpu|gpu] [--models ...] [--batch 32] [--repeats 5]
"""
from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=None,
                        help="batch size(s); default 32 on CPU, 128 on GPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per framework (default 5 CPU, 10 GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed round, one sync at its end (default 1 CPU, 10 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 1 CPU, 5 GPU)")
    parser.add_argument("--depthwise", nargs="+", choices=("auto", "slices", "lax"), default=None,
                        help="our depthwise implementations to time (default: auto on CPU, slices and lax on GPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="our compute dtype (default float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--torch-amp", nargs="+", choices=("none", "bf16", "fp16"), default=None,
                        help="PyTorch autocast dtype(s) to time (default none on CPU, bf16 on GPU; fp16 adds a "
                             "GradScaler); ratios are against the first")
    parser.add_argument("--cpu-devices", type=int, default=1,
                        help="CPU only: split the CPU into this many JAX devices and shard the batch over them, "
                             "as train.py does over XLA_FLAGS=--xla_force_host_platform_device_count=N")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=4e-5)
    parser.add_argument("--profile", type=int, default=0,
                        help="after timing, trace this many of our steps per variant and print the top ops")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    gpu = args.device == "gpu"
    defaults = dict(batch=[128] if gpu else [32], repeats=10 if gpu else 5, steps=10 if gpu else 1,
                    warmup=5 if gpu else 1, depthwise=["slices", "lax"] if gpu else ["auto"],
                    dtype="bfloat16" if gpu else "float32", torch_amp=["bf16"] if gpu else ["none"])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


ARGS = parse_args()
if ARGS.device == "gpu":  # both frameworks share the GPU: JAX must not take 75% of it up front
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
elif ARGS.cpu_devices > 1:
    from flax_mobilenet.inference import split_cpu_into_devices
    split_cpu_into_devices(ARGS.cpu_devices)

import jax  # noqa: E402

jax.config.update("jax_platforms", "cuda" if ARGS.device == "gpu" else "cpu")
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
import torch  # noqa: E402

import flax_mobilenet as fm  # noqa: E402
from flax_mobilenet.training import defaults, optim, steps, tasks  # noqa: E402
from machine import cpu_description  # noqa: E402


def import_torchvision_models():
    """The real torchvision where it imports (CUDA torch); else the model definitions through tests' shim."""
    try:
        import torchvision.models as tv_models
        import torchvision
        return tv_models, f"torchvision {torchvision.__version__}"
    except (ImportError, RuntimeError):  # CPU torch: "operator torchvision::nms does not exist"
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.path.insert(0, str(ROOT / "tests"))
        from torch_reference import tv_models
        return tv_models, "torchvision model definitions (tests/torch_reference.py shim)"


tv_models, TORCHVISION = import_torchvision_models()


def machine_description() -> str:
    if ARGS.device == "gpu":
        return f"{torch.cuda.get_device_name()} (JAX: {jax.devices()[0].device_kind}), CUDA {torch.version.cuda}"
    return cpu_description()[0]


# ------------------------------------------------------------------------------------------------ ours


def xla_flops(compiled) -> float:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend reports it
        return float("nan")
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def build_ours(name: str, batch: int, depthwise: str, dtype) -> dict:
    config = defaults.base_config()
    config.model.name = name
    config.batch_size = batch
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.learning_rate = ARGS.lr
    config.base_batch_size = 0  # no linear scaling: lr as given
    config.lr_schedule.name = "constant"
    config.weight_decay = ARGS.weight_decay
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=1)
    model = fm.create_model(name, num_classes=1000, dtype=dtype, depthwise_impl=depthwise)
    param_shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    tx = optim.create_optimizer(config, schedule, param_shapes)
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    state = jax.jit(functools.partial(steps.create_train_state, model, tx, image_size=224, use_ema=False),
                    out_shardings=replicated)(jax.random.key(0))
    rng = np.random.default_rng(0)
    data = {"image": jax.device_put(rng.standard_normal((batch, 224, 224, 3), dtype=np.float32), sharded),
            "label": jax.device_put(rng.integers(0, 1000, batch).astype(np.int32), sharded)}
    step = jax.jit(functools.partial(steps.train_step, model=model, task=tasks.Classification(), tx=tx,
                                     schedule=schedule, ema_decay=0.0), donate_argnums=0, out_shardings=(replicated, replicated))
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state, "metrics": None}

    def run(n: int) -> None:
        state, metrics = holder["state"], None
        for _ in range(n):
            state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
        holder["state"], holder["metrics"] = state, metrics

    return dict(run=run, compile_s=compile_s, gflop_per_image=xla_flops(compiled) * len(jax.devices()) / batch / 1e9,
                loss=lambda: float(holder["metrics"]["loss"]))


# ------------------------------------------------------------------------------------------------ PyTorch


def build_torch(name: str, batch: int, amp: str) -> dict:
    device = torch.device("cuda" if ARGS.device == "gpu" else "cpu")
    torch.manual_seed(0)
    model = getattr(tv_models, name)(num_classes=1000).to(device).train()
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    if ARGS.device == "gpu":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=ARGS.lr, momentum=0.9, weight_decay=ARGS.weight_decay)
    criterion = torch.nn.CrossEntropyLoss()
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    holder = {"loss": None}

    def one_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = criterion(model(images), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    def run(n: int) -> None:
        for _ in range(n):
            holder["loss"] = one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return dict(run=run, loss=lambda: float(holder["loss"].detach()))


# ------------------------------------------------------------------------------------------------ profile


def profile_top_ops(run: Callable[[int], None], n: int, top: int = 12) -> list[tuple[str, float, float]]:
    """Trace n of our steps; (op family, ms per step, share): op events summed by name without the .N suffix."""
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            run(n)
        path = next(Path(logdir).rglob("*.trace.json.gz"))
        events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    if ARGS.device == "gpu":
        wanted = {pid for pid, name in names.items() if "/device:GPU" in name}
        threads = None
    else:  # XLA:CPU's op events live on the host threads that run the executable
        wanted = set(names)
        threads = {(e["pid"], e["tid"]) for e in events
                   if e.get("ph") == "X" and "hlo_op" in e.get("args", {})}
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in wanted:
            continue
        if threads is not None and (e["pid"], e["tid"]) not in threads:
            continue
        if ARGS.device == "cpu" and "hlo_op" not in e.get("args", {}):
            continue
        totals[re.sub(r"[._]\d+$", "", e["name"])] += e.get("dur", 0.0)  # fusion.12 -> fusion
    if not totals:
        return [("no op events found; trace processes: " + ", ".join(sorted(set(names.values()))), 0.0, 0.0)]
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [(name, us / 1e3 / n, us / total) for name, us in ranked] + [("(all ops)", total / 1e3 / n, 1.0)]


# ------------------------------------------------------------------------------------------------ benchmark


def benchmark(name: str, batch: int) -> dict:
    dtype = jnp.bfloat16 if ARGS.dtype == "bfloat16" else jnp.float32
    runners: dict[str, dict] = {}
    for impl in ARGS.depthwise:
        runners[f"ours:{impl}"] = build_ours(name, batch, impl, dtype)
    for amp in ARGS.torch_amp:
        runners[f"torch:{amp}"] = build_torch(name, batch, amp)
    for runner in runners.values():
        runner["run"](ARGS.warmup)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(ARGS.repeats):  # interleaved: every framework once per round
        for key, runner in runners.items():
            start = time.perf_counter()
            runner["run"](ARGS.steps)
            times[key].append((time.perf_counter() - start) / ARGS.steps)
    result = dict(model=name, batch=batch, variants={})
    for key, runner in runners.items():
        median = statistics.median(times[key])
        result["variants"][key] = dict(ms=median * 1e3, images_per_s=batch / median, loss=runner["loss"](),
                                       spread=(min(times[key]) * 1e3, max(times[key]) * 1e3),
                                       compile_s=runner.get("compile_s"), gflop_per_image=runner.get("gflop_per_image"))
    if ARGS.profile:
        for key, runner in runners.items():
            if key.startswith("ours"):
                result["variants"][key]["top_ops"] = profile_top_ops(runner["run"], ARGS.profile)
    return result


def label(key: str) -> str:
    if key.startswith("torch"):
        amp = key.split(":", 1)[1]
        return "PyTorch" + ("" if amp == "none" else f" AMP {amp}")
    impl = key.split(":", 1)[1]
    return "ours" if len(ARGS.depthwise) == 1 else f"ours ({impl})"


def table_header(keys: list[str]) -> str:
    ours = [k for k in keys if k.startswith("ours")]
    reference = next(k for k in keys if k.startswith("torch"))
    cols = ["model", "batch"]
    cols += [f"{label(k)} ms" for k in keys] + [f"{label(k)} img/s" for k in keys]
    cols += [f"{label(k)} / {label(reference)}" for k in ours] + [f"{label(k)} compile s" for k in ours]
    cols += [f"{label(k)} XLA GFLOP/img" for k in ours]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def table_row(r: dict) -> str:
    v = r["variants"]
    keys = list(v)
    ours = [k for k in keys if k.startswith("ours")]
    reference = next(k for k in keys if k.startswith("torch"))
    cells = [r["model"], str(r["batch"])]
    cells += [f"{v[k]['ms']:.1f}" for k in keys] + [f"{v[k]['images_per_s']:.1f}" for k in keys]
    cells += [f"{v[k]['images_per_s'] / v[reference]['images_per_s']:.2f}x" for k in ours]
    cells += [f"{v[k]['compile_s']:.1f}" for k in ours] + [f"{v[k]['gflop_per_image']:.2f}" for k in ours]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    if ARGS.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    else:
        torch.backends.cudnn.benchmark = True
    print(f"Machine: {machine_description()}; {platform.python_version()}, jax {jax.__version__} "
          f"({jax.default_backend()}, {len(jax.devices())} device(s)), torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}), {TORCHVISION}")
    print(f"ours {ARGS.dtype} depthwise {ARGS.depthwise}, batch sharded over {len(jax.devices())} device(s); PyTorch autocast {ARGS.torch_amp}"
          f"{' (fp16 with GradScaler)' if 'fp16' in ARGS.torch_amp else ''}"
          f"{', channels_last, cudnn.benchmark' if ARGS.device == 'gpu' else ''}; SGD lr {ARGS.lr} momentum 0.9 "
          f"wd {ARGS.weight_decay}; {ARGS.warmup} warm-up steps, {ARGS.repeats} rounds x {ARGS.steps} step(s)",
          flush=True)
    results, rows = [], []
    for name in ARGS.models:
        for batch in ARGS.batch:
            r = benchmark(name, batch)
            results.append(r)
            rows.append(table_row(r))
            detail = ", ".join(f"{label(k)}: loss {x['loss']:.3f}, ms min/max {x['spread'][0]:.1f}/{x['spread'][1]:.1f}"
                               for k, x in r["variants"].items())
            print(f"{name} batch {batch}: {detail}", flush=True)
            print(table_header(list(r["variants"])) + "\n" + rows[-1], flush=True)
            for key, x in r["variants"].items():
                for op, ms, share in x.get("top_ops", []):
                    print(f"    {label(key)} {ms:8.2f} ms/step {100 * share:5.1f}%  {op[:110]}")
    print("\n" + table_header(list(results[0]["variants"])) + "\n" + "\n".join(rows))
    if ARGS.json:
        record = dict(machine=machine_description(), args={k: str(v) for k, v in vars(ARGS).items()}, results=results)
        ARGS.json.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
