"""CPU inference latency: flax-mobilenet (compile_inference, and its ONNX and TFLite exports) vs PyTorch.

Five runners, all with the same weights (the torchvision or timm reference model, random weights) at the
crop size the model's weights are evaluated at, interleaved round by round so that machine noise hits them
alike (in a new random order each round); we report medians and ratios:
- ours (XLA): `compile_inference`;
- PyTorch eager, and the reference's own ONNX export (`torch.onnx.export`) in ONNX Runtime;
- our ONNX export (`export.py --format onnx`, any batch) in ONNX Runtime, same session options;
- our TFLite export (`--format tflite`, fixed batch) in LiteRT with XNNPACK on every core.
Needs the dev and export requirements plus onnxscript (pip install -r requirements-export.txt onnxscript &&
pip install --no-deps jax2onnx==0.17.1).

    python benchmarks/cpu_inference.py [--models mobilenet_v2 ...] [--batches 1 32] [--rounds 20]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import flax_mobilenet as fm  # noqa: E402
from flax_mobilenet.export import export_model  # noqa: E402
from flax_mobilenet.export import onnx as onnx_export  # noqa: E402
from flax_mobilenet.export import tflite as tflite_export  # noqa: E402
from flax_mobilenet.inference import split_cpu_into_devices  # noqa: E402

if "--split-devices" in sys.argv:  # before JAX initialises its CPU backend
    split_cpu_into_devices()
import jax  # noqa: E402
from machine import cpu_description  # noqa: E402
from torch_reference import timm, torch, tv_models  # noqa: E402  (torchvision without its CUDA-only ops)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


def reference_model(name: str):
    """The PyTorch model `name` reproduces: torchvision's or timm's definition, eval mode."""
    if fm.registry.model_entry(name).source == "torchvision":
        return getattr(tv_models, name)().eval()
    return timm.create_model(name).eval()


def onnx_session(model, batch: int, size: int, path: Path):
    import onnxruntime as ort
    example = torch.zeros(batch, 3, size, size)
    torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


RUNNERS = ("flax-mobilenet", "pytorch", "onnxruntime", "our-onnx", "our-tflite")


def benchmark(name: str, batch: int, rounds: int, calls: int, workdir: Path, timed: tuple[str, ...] = RUNNERS) -> dict:
    reference = reference_model(name)
    size = fm.weights_info(name).crop_size
    variables = fm.convert_state_dict(name, reference.state_dict())
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)
    images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))

    start = time.perf_counter()
    ours = fm.compile_inference(name, variables, batch_size=batch, image_size=size)
    compile_s = time.perf_counter() - start
    session = onnx_session(reference, batch, size, workdir / f"{name}_{batch}.onnx")
    start = time.perf_counter()
    export_model(name, variables, workdir / "onnx", image_size=size, format="onnx")
    export_s = time.perf_counter() - start
    our_session = onnx_export.session(str(workdir / "onnx" / "model.onnx"), threads=os.cpu_count() or 1)
    export_model(name, variables, workdir / "tflite", batch_size=batch, image_size=size, format="tflite")
    interpreter = tflite_export.interpreter((workdir / "tflite" / "model.tflite").read_bytes())
    (tflite_input,), (tflite_output,) = interpreter.get_input_details(), interpreter.get_output_details()
    images_torch = torch.from_numpy(images_nchw)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        reference(images_torch)

    def run_ours():
        ours(images).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            reference(images_torch)

    def run_onnx():
        return session.run(None, {"images": images_nchw})[0]

    def run_our_onnx():
        return our_session.run(None, {"images": images})[0]

    def run_our_tflite():
        interpreter.set_tensor(tflite_input["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(tflite_output["index"])

    runners = {"flax-mobilenet": run_ours, "pytorch": run_torch, "onnxruntime": run_onnx,
               "our-onnx": run_our_onnx, "our-tflite": run_our_tflite}
    expected = reference(images_torch).detach().numpy()
    scale = np.abs(expected).max()
    errors = {key: float(np.abs(np.asarray(got) - expected).max() / scale)
              for key, got in (("flax-mobilenet", ours(images)), ("our-onnx", run_our_onnx()),
                               ("our-tflite", run_our_tflite()))}
    runners = {k: v for k, v in runners.items() if k in timed}
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
    medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return dict(name=name, batch=batch, size=size, gflop=counter.get_total_flops() / 1e9, compile_s=compile_s,
                export_s=export_s, error=max(errors.values()), errors=errors, **medians)


def run_cell_in_own_process(name: str, batch: int, args: argparse.Namespace) -> dict:
    """A fresh process per cell: no cell inherits another's heap, thread pools or malloc settings."""
    command = [sys.executable, __file__, "--cell", f"{name}:{batch}", "--rounds", str(args.rounds),
               "--runners", *args.runners]
    command += ["--split-devices"] if args.split_devices else []
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} batch {batch} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                                                        "shufflenet_v2_x1_0", "mobilenetv4_conv_small", "mobilevit_xs"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS),
                        help="the runners to time (all of them are built and checked)")
    parser.add_argument("--split-devices", action="store_true", help="one JAX device per core (see inference.py)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one model:batch, printed as JSON
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.cell:
        name, batch = args.cell.split(":")
        with tempfile.TemporaryDirectory() as workdir:
            print(json.dumps(benchmark(name, int(batch), args.rounds, 10 if batch == "1" else 1, Path(workdir),
                                       tuple(args.runners))))
        return
    cpu, peak = cpu_description()
    print(f"CPU: {cpu}; nominal fp32 peak {peak:.0f} GFLOP/s; {len(jax.devices())} JAX device(s); "
          f"jax {jax.__version__}, torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}")
    print(f"LiteRT: ai-edge-litert {tflite_export.version('ai-edge-litert')}, XNNPACK, {os.cpu_count()} threads; "
          f"ONNX Runtime: {os.cpu_count()} intra-op threads, all graph optimizations")
    print("| model | size | batch | flax-mobilenet ms | PyTorch eager ms | ONNX Runtime ms | our ONNX in ORT ms "
          "| our TFLite in LiteRT ms | PyTorch / ours | ours / ORT | our ONNX / ORT | our TFLite / ORT "
          "| ours GFLOP/s (% peak) | compile s | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for batch in args.batches:
            r = run_cell_in_own_process(name, batch, args)
            ms = lambda key: f"{r[key]:.2f}" if key in r else "-"  # noqa: E731
            ratio = lambda a, b: f"{r[a] / r[b]:.2f}x" if a in r and b in r else "-"  # noqa: E731
            achieved = (f"{r['gflop'] / (r['flax-mobilenet'] / 1e3):.0f} "  # the reference's conv/matmul FLOPs
                        f"({100 * r['gflop'] / (r['flax-mobilenet'] / 1e3) / peak:.0f}%)" if "flax-mobilenet" in r
                        else "-")
            print(f"| {name} | {r['size']} | {batch} | {ms('flax-mobilenet')} | {ms('pytorch')} | {ms('onnxruntime')} "
                  f"| {ms('our-onnx')} | {ms('our-tflite')} | {ratio('pytorch', 'flax-mobilenet')} "
                  f"| {ratio('flax-mobilenet', 'onnxruntime')} | {ratio('our-onnx', 'onnxruntime')} "
                  f"| {ratio('our-tflite', 'onnxruntime')} | {achieved} | {r['compile_s']:.1f} | {r['error']:.1e} |",
                  flush=True)

if __name__ == "__main__":
    main()
