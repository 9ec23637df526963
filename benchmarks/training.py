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

YOLO models (any registered name of source 'ultralytics': yolov8n, yolov8n_mobilenet_v2, ...) train on
random --image-size images (default 640, values in [0, 1]) with --yolo-boxes random boxes per image
(the same boxes for both frameworks), 80 classes.  Ours: the head's task loss (`create_task('detection')`:
the port of ultralytics' v8DetectionLoss, or of yolov5's ComputeLoss for anchor-based heads) in
`steps.train_step`.  The reference is the PyTorch model our parity tests compare against
(tests/yolo_reference.py: ultralytics' DetectionModel from its YAML, the `yolov5` package's Model, or the
seeds' hybrids) stepped as ultralytics' trainer steps it (engine/trainer.py `_do_train` + `optimizer_step`):
autocast forward and loss, `loss.sum()` scaled by a GradScaler (enabled for fp16 AMP) and backward, unscale,
clip_grad_norm_(10), SGD step, scaler update, zero_grad, ModelEMA update; channels_last on GPU.
`--yolo-optimizer ultralytics` (default) runs ultralytics' recipe on both sides: ours
`defaults.ultralytics_recipe` (grad clip 10, its three parameter groups, nesterov SGD 0.937, scheduled
lr/momentum, EMA with tau 2000), theirs `BaseTrainer.build_optimizer`'s groups (nesterov SGD 0.937, lr 0.01,
the same weight decay) and `ModelEMA`.  `--yolo-optimizer sgd`: plain nesterov SGD 0.937, lr 0.01, weight
decay 5e-4 on every parameter, no clipping, no EMA, on both.  Both update every batch (ultralytics
accumulates round(64 / batch) batches per optimizer step below batch 43: a step here is one batch's work).

    python benchmarks/training.py [--device cpu|gpu] [--models ...] [--batch 32] [--repeats 5]
    python benchmarks/training.py --models yolov8n yolov8n_mobilenet_v2 --image-size 640 --batch 8
"""
from __future__ import annotations

import argparse
import functools
import gzip
import json
import math
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
    parser.add_argument("--image-size", type=int, default=640,
                        help="YOLO models: square input side (classifiers always train at 224)")
    parser.add_argument("--yolo-boxes", type=int, default=8, help="YOLO models: random boxes per image")
    parser.add_argument("--yolo-optimizer", choices=("ultralytics", "sgd"), default="ultralytics",
                        help="YOLO models: ultralytics' recipe (clip, parameter groups, EMA) or plain nesterov SGD")
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


def build_ours(name: str, batch: int, depthwise: str, dtype, yolo_data: dict | None = None) -> dict:
    if yolo_data is not None:
        return build_ours_yolo(name, batch, depthwise, dtype, yolo_data)
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
    return _compiled_steps(step, state, data, batch)


def build_ours_yolo(name: str, batch: int, depthwise: str, dtype, yolo_data: dict) -> dict:
    """Our YOLO train step as the trainer jits it: the detection task's loss, the recipe's optimizer, donated."""
    size = ARGS.image_size
    config = defaults.base_config()
    config.model.name = name
    if ARGS.yolo_optimizer == "ultralytics":
        defaults.ultralytics_recipe(config)
    else:
        config.optimizer.update(name="sgd", momentum=0.937, nesterov=True)
        config.learning_rate = 0.01
        config.base_batch_size = 0
        config.lr_schedule.name = "constant"
        config.weight_decay = 5e-4
        config.weight_decay_skip_bn_bias = False  # torch.optim.SGD(model.parameters(), weight_decay=...)
    config.image_size = size
    config.batch_size = batch
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=1000)
    model = fm.create_model(name, num_classes=80, dtype=dtype, depthwise_impl=depthwise)
    param_shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    tx = optim.create_optimizer(config, schedule, param_shapes)
    task = tasks.create_task("detection", model, 80, size)
    use_ema = bool(config.ema_decay)
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    state = jax.jit(functools.partial(steps.create_train_state, model, tx, image_size=size, use_ema=use_ema),
                    out_shardings=replicated)(jax.random.key(0))
    data = {"image": jax.device_put(yolo_data["images"], sharded),
            "boxes": jax.device_put(yolo_data["boxes"], sharded),
            "labels": jax.device_put(yolo_data["labels"], sharded),
            "box_mask": jax.device_put(np.ones(yolo_data["labels"].shape, bool), sharded)}
    step = jax.jit(functools.partial(steps.train_step, model=model, task=task, tx=tx, schedule=schedule,
                                     ema_decay=config.ema_decay, ema_tau=config.ema_tau),
                   in_shardings=(replicated, sharded), out_shardings=(replicated, replicated), donate_argnums=0)
    return _compiled_steps(step, state, data, batch)


def _compiled_steps(step, state, data: dict, batch: int) -> dict:
    """Compile `step` (timed) and return `run(n)`: n donated steps on the same data, then one sync."""
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
                loss=lambda: float(holder["metrics"]["loss"]) if holder["metrics"] is not None else float("nan"))


# ------------------------------------------------------------------------------------------------ PyTorch


def build_torch(name: str, batch: int, amp: str, yolo_data: dict | None = None) -> dict:
    if yolo_data is not None:
        return build_torch_yolo(name, batch, amp, yolo_data)
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

    return _torch_steps(one_step, device)


# ------------------------------------------------------------------------------------------------ YOLO


def is_yolo(name: str) -> bool:
    return fm.registry.model_entry(name).source == "ultralytics"


@functools.cache
def yolo_reference():
    """tests/yolo_reference.py (ultralytics, yolov5 and the seeds' models; it installs the torchvision stub and
    quiets the packages first) and the pieces of ultralytics' trainer used here."""
    sys.path.insert(0, str(ROOT / "tests"))
    import yolo_reference as yr
    with yr._quiet():
        from ultralytics.cfg import get_cfg
        from ultralytics.engine.trainer import BaseTrainer
        from ultralytics.utils.loss import v8DetectionLoss
        from ultralytics.utils.torch_utils import ModelEMA
        from yolov5.utils.loss import ComputeLoss
    import ultralytics
    return dict(yr=yr, get_cfg=get_cfg, BaseTrainer=BaseTrainer, v8DetectionLoss=v8DetectionLoss,
                ModelEMA=ModelEMA, ComputeLoss=ComputeLoss, version=ultralytics.__version__)


@functools.cache
def yolo_torch_base(name: str):
    """(the shared PyTorch model of `name` at 80 classes (yolo_reference's cached, eval mode: copy it first),
    whether its head is anchor-based (yolov5's Detect), what it is)."""
    ref = yolo_reference()
    yr = ref["yr"]
    if name in ("yolov8n_mobilenet_v2", "yolov8s_mobilenet_v2"):
        model, what = yr.seed004_model(name[6], 80), "seed 004's hybrid (tests/yolo_reference.py), v8DetectionLoss"
    elif name in ("yolov5_mobilenet_v3_small", "yolov5_mobilenet_v3_large"):
        model = yr.seed000_model(name.rsplit("_", 1)[1], nc=80)
        what = "seed 000's hybrid (tests/yolo_reference.py), yolov5 7.0 ComputeLoss"
    elif name == "yolov5n":
        model, what = yr.yolov5_model("yolov5n.yaml", 80), "yolov5 7.0 Model(yolov5n.yaml), ComputeLoss"
    else:
        try:
            model = yr.ultralytics_model(f"{name}.yaml", 80)
        except Exception as error:
            raise SystemExit(f"{name}: no PyTorch reference (not an ultralytics YAML, nor one of the seeds' "
                             f"hybrids): {error}") from None
        what = f"ultralytics {ref['version']} DetectionModel({name}.yaml), v8DetectionLoss"
    return model, isinstance(model.model[-1], yr.YOLOv5Detect), what


def yolo_torch_model(name: str):
    """A fresh copy of `name`'s PyTorch model in train mode, and whether its head is anchor-based.  The head's
    output biases get their training init back (yolo_reference randomizes them for the parity tests): with
    random class biases the first losses are ~1e4 and fp16 AMP would skip steps on overflowing gradients."""
    import copy
    base, anchor_based, _ = yolo_torch_base(name)
    model = copy.deepcopy(base).train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    head = model.model[-1]
    with torch.no_grad():
        if anchor_based:  # yolov5 Model._initialize_biases, on the randomized biases: set, not added
            for conv, stride in zip(head.m, head.stride):
                bias = conv.bias.view(head.na, -1)
                bias[:, 4] = math.log(8 / (640 / float(stride)) ** 2)
                bias[:, 5:5 + head.nc] = math.log(0.6 / (head.nc - 0.99999))
        else:  # ultralytics Detect.bias_init: box 2.0, classes log(5 / nc / (640 / s)^2)
            head.bias_init()
    return model, anchor_based


def yolo_data(batch: int) -> dict:
    """Random images in [0, 1] and --yolo-boxes random boxes per image (xyxy pixels, 1-based labels), seed 0."""
    size, m = ARGS.image_size, ARGS.yolo_boxes
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    wh = rng.uniform(0.04, 0.5, (batch, m, 2)) * size
    centre = rng.uniform(0, size, (batch, m, 2))
    x1y1 = np.clip(centre - wh / 2, 0, size - 2)
    x2y2 = np.maximum(np.clip(centre + wh / 2, 0, size), x1y1 + 2)
    boxes = np.concatenate([x1y1, x2y2], -1).astype(np.float32)
    labels = rng.integers(1, 81, (batch, m)).astype(np.int32)
    return dict(images=images, boxes=boxes, labels=labels)


def build_torch_yolo(name: str, batch: int, amp: str, yolo_data: dict) -> dict:
    """One batch as ultralytics' trainer runs it (yolov5's train.py the same way for anchor-based heads)."""
    ref = yolo_reference()
    device = torch.device("cuda" if ARGS.device == "gpu" else "cpu")
    model, anchor_based = yolo_torch_model(name)
    model = model.to(device)
    head = model.model[-1]
    head.stride = head.stride.to(device)  # a plain attribute: DetectionModel._apply moves it, GraphModel not
    size = ARGS.image_size
    images = torch.from_numpy(yolo_data["images"].transpose(0, 3, 1, 2).copy()).to(device)
    if ARGS.device == "gpu":  # ultralytics 8.4 trains channels_last on CUDA (args.channels_last None)
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    boxes, labels = yolo_data["boxes"].reshape(-1, 4), yolo_data["labels"].reshape(-1)
    cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / size
    image_index = np.repeat(np.arange(batch), ARGS.yolo_boxes).astype(np.float32)
    if anchor_based:  # yolov5 train.py: targets (image, class, cx, cy, w, h) normalised; hyp rescaled
        from flax_mobilenet.detection.yolov5_loss import YOLOV5_HYP
        hyp = {k: v for k, v in YOLOV5_HYP.items() if k != "balance"}
        hyp["fl_gamma"] = 0.0
        levels = head.nl
        hyp["box"] *= 3 / levels
        hyp["cls"] *= 80 / 80 * 3 / levels
        hyp["obj"] *= (size / 640) ** 2 * 3 / levels
        model.hyp = hyp
        criterion = ref["ComputeLoss"](model)
        targets = torch.from_numpy(np.concatenate([image_index[:, None], labels[:, None] - 1.0, cxcywh], 1)
                                   .astype(np.float32)).to(device)

        def loss_of(images):
            return criterion(model(images), targets)
    else:  # DetectionModel.loss: v8DetectionLoss(model) on the train outputs, hyperparameters get_cfg()'s
        model.args = ref["get_cfg"]()
        criterion = ref["v8DetectionLoss"](model)
        targets = {"batch_idx": torch.from_numpy(image_index).to(device),
                   "cls": torch.from_numpy((labels - 1).astype(np.float32)[:, None]).to(device),
                   "bboxes": torch.from_numpy(cxcywh.astype(np.float32)).to(device)}

        def loss_of(images):
            return criterion(model(images), {"img": images, **targets})
    if ARGS.yolo_optimizer == "ultralytics":
        config = defaults.ultralytics_recipe(defaults.base_config())
        config.batch_size = batch
        decay = optim.effective_weight_decay(config)  # the same value as ours (ultralytics': x accumulate)
        trainer = type("Trainer", (), {"args": ref["get_cfg"]()})()
        with ref["yr"]._quiet():
            optimizer = ref["BaseTrainer"].build_optimizer(trainer, model, name="SGD", lr=0.01, momentum=0.937,
                                                           decay=decay)
        ema = ref["ModelEMA"](model)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True, weight_decay=5e-4)
        ema = None
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    clip = ARGS.yolo_optimizer == "ultralytics"

    def one_step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = loss_of(images)
            loss = loss.sum()  # trainer: self.loss = loss.sum()
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if ema is not None:
            ema.update(model)
        return loss

    return _torch_steps(one_step, device)


def _torch_steps(one_step, device) -> dict:
    """`run(n)`: n PyTorch steps, then one sync (CUDA)."""
    import torch

    holder = {"loss": None}

    def run(n: int) -> None:
        for _ in range(n):
            holder["loss"] = one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return dict(run=run, loss=lambda: float(holder["loss"].detach()) if holder["loss"] is not None else float("nan"))


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
    data = yolo_data(batch) if is_yolo(name) else None
    runners: dict[str, dict] = {}
    for impl in ARGS.depthwise:
        runners[f"ours:{impl}"] = build_ours(name, batch, impl, dtype, data)
    for amp in ARGS.torch_amp:
        runners[f"torch:{amp}"] = build_torch(name, batch, amp, data)
    for runner in runners.values():
        runner["run"](ARGS.warmup)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(ARGS.repeats):  # interleaved: every framework once per round
        for key, runner in runners.items():
            start = time.perf_counter()
            runner["run"](ARGS.steps)
            times[key].append((time.perf_counter() - start) / ARGS.steps)
    result = dict(model=name, batch=batch, variants={}, reference=reference_name(name))
    if data is not None:
        result.update(image_size=ARGS.image_size, boxes=ARGS.yolo_boxes)
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


def reference_name(name: str) -> str:
    """Who the PyTorch side is, in the column headers: PyTorch (torchvision), ultralytics or yolov5."""
    if not is_yolo(name):
        return "PyTorch"
    return "yolov5" if yolo_torch_base(name)[1] else "ultralytics"


def label(key: str, reference: str = "PyTorch") -> str:
    if key.startswith("torch"):
        amp = key.split(":", 1)[1]
        return reference + ("" if amp == "none" else f" AMP {amp}")
    impl = key.split(":", 1)[1]
    return "ours" if len(ARGS.depthwise) == 1 else f"ours ({impl})"


def table_header(keys: list[str], reference_name: str = "PyTorch", yolo: bool = False) -> str:
    ours = [k for k in keys if k.startswith("ours")]
    reference = next(k for k in keys if k.startswith("torch"))
    lab = functools.partial(label, reference=reference_name)
    cols = ["model", "image", "boxes", "batch"] if yolo else ["model", "batch"]
    cols += [f"{lab(k)} ms" for k in keys] + [f"{lab(k)} img/s" for k in keys]
    cols += [f"{lab(k)} / {lab(reference)}" for k in ours] + [f"{lab(k)} compile s" for k in ours]
    cols += [f"{lab(k)} XLA GFLOP/img" for k in ours]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def table_row(r: dict) -> str:
    v = r["variants"]
    keys = list(v)
    ours = [k for k in keys if k.startswith("ours")]
    reference = next(k for k in keys if k.startswith("torch"))
    cells = [r["model"], str(r["batch"])]
    if "image_size" in r:
        cells[1:1] = [str(r["image_size"]), str(r["boxes"])]
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
    yolo_models = [name for name in ARGS.models if is_yolo(name)]
    if len(yolo_models) < len(ARGS.models):
        print(f"ours {ARGS.dtype} depthwise {ARGS.depthwise}, batch sharded over {len(jax.devices())} device(s); PyTorch autocast {ARGS.torch_amp}"
              f"{' (fp16 with GradScaler)' if 'fp16' in ARGS.torch_amp else ''}"
              f"{', channels_last, cudnn.benchmark' if ARGS.device == 'gpu' else ''}; SGD lr {ARGS.lr} momentum 0.9 "
              f"wd {ARGS.weight_decay}; {ARGS.warmup} warm-up steps, {ARGS.repeats} rounds x {ARGS.steps} step(s)",
              flush=True)
    if yolo_models:
        recipe = ("ultralytics' recipe (grad clip 10, 3 parameter groups, nesterov SGD 0.937, EMA)"
                  if ARGS.yolo_optimizer == "ultralytics" else "nesterov SGD 0.937 lr 0.01 wd 5e-4")
        print(f"YOLO: {ARGS.image_size}x{ARGS.image_size}, {ARGS.yolo_boxes} boxes/image, 80 classes; ours "
              f"{ARGS.dtype} depthwise {ARGS.depthwise} vs the PyTorch step of ultralytics' trainer, autocast "
              f"{ARGS.torch_amp} (GradScaler for fp16)"
              f"{', channels_last, cudnn.benchmark' if ARGS.device == 'gpu' else ''}"
              f"; {recipe}; {ARGS.warmup} warm-up steps, {ARGS.repeats} rounds x {ARGS.steps} step(s)", flush=True)
        for name in yolo_models:
            print(f"  {name}: reference {yolo_torch_base(name)[2]}", flush=True)
    results, rows = [], []
    for name in ARGS.models:
        for batch in ARGS.batch:
            r = benchmark(name, batch)
            results.append(r)
            rows.append(table_row(r))
            detail = ", ".join(f"{label(k, r['reference'])}: loss {x['loss']:.3f}, ms min/max {x['spread'][0]:.1f}/{x['spread'][1]:.1f}"
                               for k, x in r["variants"].items())
            print(f"{name} batch {batch}: {detail}", flush=True)
            print(table_header(list(r["variants"]), r["reference"], "image_size" in r) + "\n" + rows[-1], flush=True)
            for key, x in r["variants"].items():
                for op, ms, share in x.get("top_ops", []):
                    print(f"    {label(key, r['reference'])} {ms:8.2f} ms/step {100 * share:5.1f}%  {op[:110]}")
    groups: dict[tuple, list[int]] = defaultdict(list)  # one table per reference (torchvision, ultralytics, ...)
    for i, r in enumerate(results):
        groups[(r["reference"], "image_size" in r)].append(i)
    for (reference, yolo), members in groups.items():
        print("\n" + table_header(list(results[members[0]]["variants"]), reference, yolo) + "\n"
              + "\n".join(rows[i] for i in members))
    if ARGS.json:
        record = dict(machine=machine_description(), args={k: str(v) for k, v in vars(ARGS).items()}, results=results)
        ARGS.json.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
