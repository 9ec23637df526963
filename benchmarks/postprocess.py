"""What detection post-processing costs: jit(apply) (the network alone) against jit(detect) (network + decoding + NMS)
for each NMS method of `detection.nms`, batch 1 and 8, on whatever backend JAX runs on (CPU now, GPU unchanged).

Weights: the model's own init with every bias zeroed, so that the class scores sit near their middle (SSD's softmax
~1/91, YOLO's sigmoid ~0.5): every candidate slot the static shapes hold is filled (SSDLite: 90 classes x 300, YOLO:
K = 3000), the worst case for the NMS and the case a trained model at a low threshold approaches.  Inputs are
standard-normal images.  Per cell the variants run interleaved, in a new random order each round, so machine noise
hits them alike; the table has medians, the post-processing time (detect - apply) and its share of detect, and
checks that every method gave the same detections.

    python benchmarks/postprocess.py [--models ssdlite320_mobilenet_v3_large:320 yolov8n:640] [--batches 1 8]
                                     [--methods greedy fixed_point blockwise] [--rounds 15]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import flax_mobilenet as fm  # noqa: E402
from flax_mobilenet.detection import nms  # noqa: E402
from machine import cpu_description  # noqa: E402

DEFAULT_MODELS = ("ssdlite320_mobilenet_v3_large:320", "yolov8n:640")


def zero_bias_variables(model: Any, side: int) -> Any:
    """The model's init (compiled: eager init of a detector takes a minute) with every bias zeroed."""
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, side, side, 3), jnp.float32))
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.zeros_like(leaf) if "bias" in jax.tree_util.keystr(path) else leaf, variables)


def median_ms(runners: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Each runner once per round (after one warm-up call), in a new random order each round: median ms."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        jax.block_until_ready(run())
    names = list(runners)
    for _ in range(rounds):
        random.shuffle(names)
        for name in names:
            start = time.perf_counter()
            jax.block_until_ready(runners[name]())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def cell(name: str, side: int, batch: int, methods: list[str], rounds: int) -> list[str]:
    """The table rows of one model and batch: apply, then detect per method."""
    model = fm.create_model(name)
    variables = zero_bias_variables(model, side)
    images = jnp.asarray(np.random.default_rng(0).standard_normal((batch, side, side, 3), dtype=np.float32))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    detect = jax.jit(model.detect, static_argnames="nms_method")
    runners = {"apply": lambda: apply(variables, images)}
    runners.update({method: (lambda m=method: detect(variables, images, nms_method=m)) for method in methods})
    outputs = {method: jax.tree.map(np.asarray, runners[method]()) for method in methods}
    same = all(all(np.array_equal(a, b) for a, b in zip(outputs[m], outputs[methods[0]])) for m in methods)
    ms = median_ms(runners, rounds)
    kept = float(np.mean(outputs[methods[0]].num_valid))
    rows = [f"| {name} | {side} | {batch} | apply | {ms['apply']:.1f} | | | |"]
    for method in methods:
        post = ms[method] - ms["apply"]
        rows.append(f"| {name} | {side} | {batch} | detect, {method} | {ms[method]:.1f} | {post:.1f} | "
                    f"{100 * post / ms[method]:.0f}% | {kept:.0f}, {'same' if same else 'DIFFERENT'} |")
    return rows


def device_description() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        cpu, _ = cpu_description()
        return f"CPU: {cpu}"
    return f"{device.platform.upper()}: {device.device_kind} x{len(jax.devices())}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="NAME:SIDE (square inputs)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=list(nms.METHODS), choices=nms.METHODS)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{device_description()}; jax {jax.__version__}; default NMS method {nms.default_method()!r} "
          f"(block {nms.BLOCK}); medians of {args.rounds} interleaved rounds")
    print("| model | side | batch | function | median ms | post-processing ms | share of detect "
          "| detections per image, methods agree |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.models:
        name, side = spec.split(":")
        for batch in args.batches:
            for row in cell(name, int(side), batch, args.methods, args.rounds):
                print(row, flush=True)


if __name__ == "__main__":
    main()
