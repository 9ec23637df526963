"""CPU inference latency: flax-mobilenet (compile_inference, and its ONNX and TFLite exports) vs PyTorch.

Five runners, all with the same weights (the torchvision or timm reference model, random weights, converted
with `convert_state_dict`) at the crop size the model's weights are evaluated at (LR-ASPP 520, SSDLite 320),
interleaved round by round so that machine noise hits them alike (in a new random order each round); we
report medians and ratios:
- ours (XLA): `compile_inference`;
- PyTorch eager, and the reference's own ONNX export (`torch.onnx.export`) in ONNX Runtime;
- our ONNX export (`export.py --format onnx`, any batch) in ONNX Runtime, same session options;
- our TFLite export (`--format tflite`, fixed batch) in LiteRT with XNNPACK on every core.

One row per model and kind of output: a classifier's logits; a segmentation model's per-pixel logits (its
'out'); a detection model's raw head outputs (torchvision: `backbone` + `head` on the already normalized
images, i.e. without its resize/normalize transform and post-processing; ours: `apply`, and the exports with
--raw-outputs) and its detections (ours: `model.detect` compiled as one function, and the ONNX export with
the NMS inside; TFLite cannot convert the NMS).  torchvision's detections cannot be timed where its
compiled NMS op does not load (this CPU-only torch: tests/torch_reference.py); those cells say why, and the
detections row is compared with the raw-outputs row instead (what our post-processing costs).

Needs the dev and export requirements plus onnxscript (pip install -r requirements-export.txt onnxscript &&
pip install --no-deps jax2onnx==0.17.1).

    python benchmarks/cpu_inference.py [--models mobilenet_v2 ...] [--batches 1 32] [--rounds 20]

Default batches: 1 and 32 for classifiers, 1 for segmentation and detection models (a 520x520 batch of 32
takes minutes per round on two cores); --batches applies to every model given.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import flax_mobilenet as fm  # noqa: E402
from flax_mobilenet.export import export_model  # noqa: E402
from flax_mobilenet.export import onnx as onnx_export  # noqa: E402
from flax_mobilenet.export import tflite as tflite_export  # noqa: E402
from flax_mobilenet.export.common import relative_difference  # noqa: E402
from flax_mobilenet.inference import CPU_COMPILER_OPTIONS, folded_model, split_cpu_into_devices  # noqa: E402

if "--split-devices" in sys.argv:  # before JAX initialises its CPU backend
    split_cpu_into_devices()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from machine import cpu_description  # noqa: E402
from torch_reference import timm, torch, tv_models  # noqa: E402  (torchvision without its CUDA-only ops)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

RUNNERS = ("flax-mobilenet", "pytorch", "onnxruntime", "our-onnx", "our-tflite")
# The rows of a model, by task: the model alone first, then (detection) with its post-processing.
OUTPUTS = {"classification": ("logits",), "segmentation": ("logits",), "detection": ("raw", "detections")}
DEFAULT_BATCHES = {"classification": (1, 32), "segmentation": (1,), "detection": (1,)}
NO_TFLITE_NMS = "TFLite's converter cannot convert the NMS loop (our TFLite export is raw outputs only)"

Runner = Callable[[], Any]  # one call of a runtime on the cell's images; returns its outputs


def torchvision_nms_error() -> Optional[str]:
    """Why torchvision's detection post-processing cannot run here, or None if its compiled ops load.

    `SSD.postprocess_detections` calls `batched_nms`, i.e. the compiled `torchvision::nms` op (and so does
    `torch.onnx.export` of the whole model).  PyPI's torchvision wheel links that library against a CUDA
    torch; tests/torch_reference.py imports torchvision without it, which is all a CPU-only torch allows.
    """
    library = Path(tv_models.__file__).resolve().parents[1] / "_C.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return (f"torchvision's post-processing needs its compiled NMS op (torchvision/_C.so), which does not "
                f"load on this CPU-only torch: {error}")
    return None


def reference_model(name: str) -> "torch.nn.Module":
    """The PyTorch model `name` reproduces: torchvision's or timm's definition, random weights, eval mode."""
    if fm.registry.model_entry(name).source != "torchvision":
        return timm.create_model(name).eval()
    task = fm.model_spec(name).task
    if task == "classification":
        return getattr(tv_models, name)().eval()
    family = tv_models.segmentation if task == "segmentation" else tv_models.detection
    return getattr(family, name)(weights=None, weights_backbone=None).eval()


class ModelOutputs(torch.nn.Module):
    """The reference as normalized NCHW images -> a tuple of tensors, in our export's output order.

    A segmentation model's 'out' logits; a torchvision SSD's backbone + head, skipping the transform (our
    input is already resized and normalized) and the post-processing: the raw outputs ours compute.
    """

    def __init__(self, model: "torch.nn.Module"):
        super().__init__()
        self.model = model

    def forward(self, images: "torch.Tensor") -> tuple:
        if isinstance(self.model, tv_models.detection.ssd.SSD):
            outputs = self.model.head(list(self.model.backbone(images).values()))
            return outputs["bbox_regression"], outputs["cls_logits"]
        outputs = self.model(images)
        return (outputs["out"],) if isinstance(outputs, dict) else (outputs,)


def onnx_session(model: "torch.nn.Module", batch: int, size: int, path: Path, output_names: Sequence[str]) -> Any:
    """The reference exported by `torch.onnx.export` in an ONNX Runtime session (every core, every optimization)."""
    import onnxruntime as ort
    example = torch.zeros(batch, 3, size, size)
    torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=list(output_names),
                      dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compile_detect(name: str, variables: dict, batch: int, size: int) -> Callable[[np.ndarray], Any]:
    """`model.detect` (model and post-processing) compiled as one function, the way `compile_inference` compiles
    the model alone (BatchNorm folded, its XLA:CPU options): images -> `detection.Detections`."""
    model, folded = folded_model(name, variables)
    folded = jax.device_put(folded)
    lowered = jax.jit(model.detect).lower(folded, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    compiled = lowered.compile(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else lowered.compile()
    return lambda images: compiled(folded, images)


def arrays(outputs: Any) -> list[np.ndarray]:
    """A runner's outputs as a list of arrays in export order (an array, a dict of raw outputs, Detections)."""
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    return [np.asarray(o) for o in outputs] if isinstance(outputs, (list, tuple)) else [np.asarray(outputs)]


def tflite_runner(path: Path, images: np.ndarray, names: Sequence[str]) -> Runner:
    """Our TFLite export in LiteRT, its outputs by name (the flatbuffer's output order is the converter's)."""
    interpreter = tflite_export.interpreter(path.read_bytes())
    (source,) = interpreter.get_input_details()
    details = interpreter.get_signature_runner(tflite_export.SIGNATURE).get_output_details()
    indices = [details[output]["index"] for output in names]

    def run() -> list[np.ndarray]:
        interpreter.set_tensor(source["index"], images)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in indices]
    return run


@dataclasses.dataclass
class Row:
    """One table row: each runtime as a call on the cell's images, or why it cannot run here."""

    outputs: str
    runners: dict[str, Runner]
    unavailable: dict[str, str]
    errors: dict[str, float]
    compile_s: float
    export_s: float


def build_row(name: str, outputs: str, reference: ModelOutputs, variables: dict, images: np.ndarray,
              expected: list[np.ndarray], workdir: Path) -> Row:
    """Every runner of one row, built and checked: model-only outputs against the reference's (`expected`,
    NHWC), detections (no reference here) our ONNX export's against our XLA's."""
    batch, size = images.shape[:2]
    folder = workdir / outputs
    images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    images_torch = torch.from_numpy(images_nchw)
    post = outputs == "detections"
    start = time.perf_counter()
    ours = (compile_detect(name, variables, batch, size) if post
            else fm.compile_inference(name, variables, batch_size=batch, image_size=size))
    compile_s = time.perf_counter() - start
    runners: dict[str, Runner] = {"flax-mobilenet": lambda: jax.block_until_ready(ours(images))}
    unavailable: dict[str, str] = {}
    if post:
        reason = torchvision_nms_error() or "torchvision's full detection forward is not wired into this benchmark"
        unavailable.update({"pytorch": reason, "onnxruntime": reason, "our-tflite": NO_TFLITE_NMS})
    else:
        names = ("bbox_regression", "cls_logits") if outputs == "raw" else ("logits",)
        folder.mkdir(parents=True)
        session = onnx_session(reference, batch, size, folder / "torch.onnx", names)

        def run_torch() -> tuple:
            with torch.inference_mode():
                return reference(images_torch)

        runners["pytorch"] = run_torch
        runners["onnxruntime"] = lambda: session.run(None, {"images": images_nchw})
    start = time.perf_counter()
    export_model(name, variables, folder / "onnx", batch_size=batch if post else None, image_size=size,
                 format="onnx", postprocess=post)
    export_s = time.perf_counter() - start
    our_session = onnx_export.session(str(folder / "onnx" / "model.onnx"), threads=os.cpu_count() or 1)
    runners["our-onnx"] = lambda: our_session.run(None, {"images": images})
    if not post:
        export_model(name, variables, folder / "tflite", batch_size=batch, image_size=size, format="tflite",
                     postprocess=False)
        runners["our-tflite"] = tflite_runner(folder / "tflite" / "model.tflite", images, names)
    if post:  # Detections: boxes, scores, labels, num_valid; our ONNX export gives the raw outputs after them
        expected = arrays(ours(images))
    errors = {}
    for key in ("our-onnx",) if post else ("flax-mobilenet", "our-onnx", "our-tflite"):
        got = arrays(runners[key]())
        errors[key] = max(relative_difference(g, e) for g, e in zip(got, expected))
    return Row(outputs, runners, unavailable, errors, compile_s, export_s)


def benchmark(name: str, batch: int, rounds: int, calls: int, workdir: Path, timed: tuple[str, ...] = RUNNERS) -> dict:
    reference = ModelOutputs(reference_model(name)).eval()  # torch.onnx.export restores the mode it finds
    task = fm.model_spec(name).task
    size = fm.weights_info(name).crop_size
    variables = fm.convert_state_dict(name, reference.model.state_dict())
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        expected = [o.numpy() for o in reference(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))]
    expected = [e.transpose(0, 2, 3, 1) if e.ndim == 4 else e for e in expected]  # ours are NHWC
    rows = [build_row(name, outputs, reference, variables, images, expected, workdir) for outputs in OUTPUTS[task]]
    # Every runner of every row in one interleaved loop: a detections row and its raw row see the same noise.
    runners = {(row.outputs, key): run for row in rows for key, run in row.runners.items() if key in timed}
    for run in runners.values():  # warm-up
        run()
    times = {k: [] for k in runners}
    order = random.Random(0)
    for _ in range(rounds):
        # A fresh order each round, so that no runner always follows the same one, and a pause before each:
        # a runtime's threads keep spinning for a while after its call (ONNX Runtime's, OpenMP's), and two
        # ONNX Runtime sessions run back to back made the second up to 1.3x slower at batch 1.
        for key in order.sample(list(runners), len(runners)):
            run = runners[key]
            time.sleep(0.1)
            run()  # untimed: the previous runtime's threads stop spinning, this one's caches and heap warm up
            for _ in range(calls):
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
    return dict(name=name, batch=batch, size=size, gflop=counter.get_total_flops() / 1e9, rows=[
        dict(outputs=row.outputs, compile_s=row.compile_s, export_s=row.export_s, errors=row.errors,
             error=max(row.errors.values()), unavailable=row.unavailable,
             **{key: statistics.median(times[row.outputs, key]) * 1e3 for key in row.runners if key in timed})
        for row in rows])


def run_cell_in_own_process(name: str, batch: int, args: argparse.Namespace) -> dict:
    """A fresh process per cell: no cell inherits another's heap, thread pools or malloc settings."""
    command = [sys.executable, __file__, "--cell", f"{name}:{batch}", "--rounds", str(args.rounds),
               "--runners", *args.runners]
    command += ["--split-devices"] if args.split_devices else []
    command += ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} batch {batch} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                                                        "shufflenet_v2_x1_0", "mobilenetv4_conv_small", "mobilevit_xs"])
    parser.add_argument("--batches", nargs="+", type=int,
                        help="batch sizes for every model (default: 1 and 32 for classifiers, 1 for dense models)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS),
                        help="the runners to time (all of them are built and checked)")
    parser.add_argument("--split-devices", action="store_true", help="one JAX device per core (see inference.py)")
    parser.add_argument("--torch-threads", type=int,
                        help="PyTorch's intra-op threads (default: every core). On a machine that other work keeps "
                             "busy, each of PyTorch's OpenMP ops waits for all its threads to get a core: LR-ASPP "
                             "took 2.5 s with 2 threads and 0.13 s with 1 on the loaded 2-core VM")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one model:batch, printed as JSON
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    if args.cell:
        name, batch = args.cell.split(":")
        with tempfile.TemporaryDirectory() as workdir:
            print(json.dumps(benchmark(name, int(batch), args.rounds, 10 if batch == "1" else 1, Path(workdir),
                                       tuple(args.runners))))
        return
    cpu, peak = cpu_description()
    print(f"CPU: {cpu}; nominal fp32 peak {peak:.0f} GFLOP/s; {len(jax.devices())} JAX device(s); "
          f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {__import__('onnxruntime').__version__}")
    print(f"LiteRT: ai-edge-litert {tflite_export.version('ai-edge-litert')}, XNNPACK, {os.cpu_count()} threads; "
          f"ONNX Runtime: {os.cpu_count()} intra-op threads, all graph optimizations")
    print("| model | outputs | size | batch | flax-mobilenet ms | PyTorch eager ms | ONNX Runtime ms "
          "| our ONNX in ORT ms | our TFLite in LiteRT ms | PyTorch / ours | ours / ORT | our ONNX / ORT "
          "| our TFLite / ORT | ours, our ONNX / model only | ours GFLOP/s (% peak) | compile s | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reasons: dict[str, list[str]] = {}
    for name in args.models:
        for batch in args.batches or DEFAULT_BATCHES[fm.model_spec(name).task]:
            cell = run_cell_in_own_process(name, batch, args)
            model_only = cell["rows"][0]
            for r in cell["rows"]:
                for key, reason in r["unavailable"].items():
                    reasons.setdefault(reason, []).append(f"{key} ({name} {r['outputs']})")
                ms = lambda key: f"{r[key]:.2f}" if key in r else "n/a" if key in r["unavailable"] else "-"  # noqa: E731
                ratio = lambda a, b: f"{r[a] / r[b]:.2f}x" if a in r and b in r else "-"  # noqa: E731
                # vs the model alone: what the post-processing costs, for each runtime that runs both
                extra = (" / ".join(f"{r[k] / model_only[k]:.2f}x" if k in r and k in model_only else "-"
                                    for k in ("flax-mobilenet", "our-onnx")) if r is not model_only else "-")
                seconds = r.get("flax-mobilenet", 0.0) / 1e3  # the reference's conv/matmul FLOPs per call
                achieved = (f"{cell['gflop'] / seconds:.0f} ({100 * cell['gflop'] / seconds / peak:.0f}%)"
                            if seconds and r is model_only else "-")
                print(f"| {name} | {r['outputs']} | {cell['size']} | {batch} | {ms('flax-mobilenet')} "
                      f"| {ms('pytorch')} | {ms('onnxruntime')} | {ms('our-onnx')} | {ms('our-tflite')} "
                      f"| {ratio('pytorch', 'flax-mobilenet')} | {ratio('flax-mobilenet', 'onnxruntime')} "
                      f"| {ratio('our-onnx', 'onnxruntime')} | {ratio('our-tflite', 'onnxruntime')} | {extra} "
                      f"| {achieved} | {r['compile_s']:.1f} | {r['error']:.1e} |", flush=True)
    for reason, cells in reasons.items():
        print(f"n/a, {', '.join(cells)}: {reason}")


if __name__ == "__main__":
    main()
