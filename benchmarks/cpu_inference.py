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

YOLO detectors (ultralytics' DetectionModels and the seeds' hybrids with its Detect head, as
tests/yolo_reference.py builds them) at 640x640 on uniform [0, 1) images: the raw row is our 'predictions'
(N, A, 4 + nc) against ultralytics' eval output in PyTorch eager (Conv+BN fused, as its predictor runs it),
ultralytics' own ONNX export (its `Exporter`, format='onnx', its defaults: fixed batch, its opset, onnxslim when
installed) in ONNX Runtime, our ONNX export (any batch) and our TFLite export; the detections row (ultralytics'
predict settings: conf 0.25, IoU 0.7, max_det 300) is ours `model.detect`, our ONNX export with the NMS inside,
PyTorch eager followed by ultralytics' predict-path `non_max_suppression` (with its own TorchNMS: torchvision's
compiled NMS does not load here) and ultralytics' nms=True ONNX export (its NMSModel; NonMaxSuppression).
Detections are compared as sets of (box, score, label) rows: near-tied scores may come out in either order.
The random reference weights are conditioned first (`condition_yolo`: BatchNorm statistics of two random images,
the class biases shifted so that ~1% of the anchors pass conf 0.25); both sides get the same weights.

Needs the dev and export requirements plus onnxscript (pip install -r requirements-export.txt onnxscript &&
pip install --no-deps jax2onnx==0.17.1).

    python benchmarks/cpu_inference.py [--models mobilenet_v2 ...] [--batches 1 32] [--rounds 20]

Default batches: 1 and 32 for classifiers, 1 for segmentation and detection models (a 520x520 batch of 32
takes minutes per round on two cores); --batches applies to every model given; --batch-rounds B:R times batch
B for R rounds instead (e.g. --batch-rounds 8:5 for YOLO at 640).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import importlib.util
import json
import math
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
    example = torch.zeros(batch, 3, size, size)
    torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=list(output_names),
                      dynamo=False)
    return ort_session(path)


def ort_session(path: Path) -> Any:
    """An ONNX file in an ONNX Runtime session (every core, every optimization), as the reference's exports run."""
    import onnxruntime as ort
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
    note: str = ""  # how the reference's export was made, where it matters


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


# ------------------------------------------------------------------------------------------------------ YOLO

# Our YOLO models with ultralytics' anchor-free Detect head -> their reference's builder in tests/yolo_reference.py.
YOLO_REFERENCES = {
    "yolov8n": ("ultralytics_model", "yolov8n.yaml"), "yolov8s": ("ultralytics_model", "yolov8s.yaml"),
    "yolov5nu": ("ultralytics_model", "yolov5nu.yaml"), "yolo11n": ("ultralytics_model", "yolo11n.yaml"),
    "yolov8n_mobilenet_v2": ("seed004_model", "n"), "yolov8s_mobilenet_v2": ("seed004_model", "s"),
}
YOLO_CANDIDATES = 0.01  # the share of anchors whose best class scores above the predict confidence (`condition_yolo`)
YOLO_PREDICT = dict(conf_thres=0.25, iou_thres=0.7, max_det=300)  # ultralytics' predict settings (= our preset)


def condition_yolo(model: "torch.nn.Module", seed: int = 1) -> "torch.nn.Module":
    """A copy of the YOLO reference with its random weights made fit for timing detections.

    As built (PyTorch's default conv init, randomized BatchNorm statistics) the signal fades within a few layers:
    every anchor of every image gets nearly the same class scores (all 8400 above 0.25, a few 1e-3 apart), so
    the NMS meets its worst case (ultralytics' takes ~1 s per image) and which boxes it keeps hinges on rounding.
    So each BatchNorm's running statistics become those of two random 640x640 images (train-mode forward,
    cumulative average), and every class output bias is shifted by one constant so that YOLO_CANDIDATES of those
    images' anchors score above 0.25 (84 per image on average).  Both sides run these weights (convert_state_dict)."""
    model = copy.deepcopy(model)
    calibration = torch.from_numpy(np.random.default_rng(seed).random((2, 3, 640, 640), dtype=np.float32))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(calibration)
    model.eval()
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    with torch.no_grad():
        scores = model(calibration)[0][:, 4:]  # eval output (N, 4 + nc, A): class scores
        best = torch.logit(scores.double()).amax(1).flatten()
        shift = math.log(0.25 / 0.75) - float(torch.quantile(best, 1 - YOLO_CANDIDATES))
        for branch in model.model[-1].cv3:
            branch[-1].bias += shift
    return model


def as_ultralytics(model: "torch.nn.Module", pt_path: Path) -> "torch.nn.Module":
    """`model` (a copy) with what ultralytics' Exporter and `fuse` read of a model they loaded: its task, its file
    (the export is written beside it), and for the seeds' GraphModel a YAML dict, class names and BaseModel's
    fuse (which fuses ultralytics' Conv modules, as for its own models)."""
    import types
    from ultralytics.nn.tasks import BaseModel
    model = copy.deepcopy(model)
    model.task, model.pt_path = "detect", str(pt_path)
    if not isinstance(model, BaseModel):
        model.yaml = {"channels": 3}
        model.names = {i: str(i) for i in range(model.model[-1].nc)}
        model.fuse = types.MethodType(BaseModel.fuse, model)
        model.is_fused = types.MethodType(BaseModel.is_fused, model)
        model.info = lambda *args, **kwargs: None
    return model


_TORCHVISION_OPS: list = []  # the torch.library.Library that defines torchvision::nms here (kept alive)


def traceable_torchvision_nms() -> None:
    """`torchvision.ops.nms` as torchvision's op `torchvision::nms`, so that ultralytics' nms=True export traces
    it to ONNX's NonMaxSuppression (torchvision's own ONNX symbolic) as it does where torchvision's compiled ops
    load.  Its kernel here, for the trace's one eager run only, is ultralytics' TorchNMS; ONNX Runtime runs its
    own NonMaxSuppression."""
    import torchvision.ops
    from torchvision.ops import _register_onnx_ops
    from ultralytics.utils.nms import TorchNMS
    if not _TORCHVISION_OPS:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.impl("nms", TorchNMS.nms, "CPU")
        _register_onnx_ops._register_custom_op()
        _TORCHVISION_OPS.append(library)
    torchvision.ops.nms = lambda boxes, scores, iou_threshold: torch.ops.torchvision.nms(boxes, scores, iou_threshold)


def ultralytics_onnx(model: "torch.nn.Module", batch: int, size: int, folder: Path, nms: bool = False) -> tuple[Path, str]:
    """ultralytics' own ONNX export of `model`: its Exporter with format='onnx' and its defaults otherwise (fixed
    batch, `best_onnx_opset`, Detect in export mode, C2f's split forward, onnxslim when installed); with `nms`,
    its nms=True export (its NMSModel: the predict confidence 0.25, IoU 0.7, max_det 300, torchvision's NMS as
    NonMaxSuppression, one per image).  The file and how it was made."""
    import onnx
    import torchvision.ops
    from ultralytics.engine.exporter import Exporter
    folder.mkdir(parents=True, exist_ok=True)
    model = as_ultralytics(model, folder / "ultralytics.pt")
    nms_op = torchvision.ops.nms
    if nms:
        traceable_torchvision_nms()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            path = Path(Exporter(overrides=dict(format="onnx", imgsz=size, batch=batch, dynamic=False, nms=nms))(
                model=model))
    finally:
        torchvision.ops.nms = nms_op
    opset = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain == "")
    slim = (f"onnxslim {tflite_export.version('onnxslim')}" if importlib.util.find_spec("onnxslim")
            else "onnxslim not installed: not slimmed")
    return path, (f"ultralytics {tflite_export.version('ultralytics')} Exporter{', nms=True' if nms else ''}, "
                  f"opset {opset}, {slim}")


def detection_rows(detections: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Detections (boxes, scores, labels, num_valid, ...) as ultralytics' (n, 6) rows per image."""
    boxes, scores, labels, num_valid = (np.asarray(a) for a in detections[:4])
    return [np.concatenate([boxes[i, :n], scores[i, :n, None], labels[i, :n, None]], axis=1)
            for i, n in enumerate(num_valid.tolist())]


def detections_difference(ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]) -> tuple[float, int]:
    """Two runtimes' detections, (n, 6) rows per image [x1, y1, x2, y2, score, label] (rows with score 0 are
    padding): each of our rows paired with the other's row of the same label whose box is nearest, if within 1e-3
    of the boxes' scale; the largest relative difference of the paired boxes and scores, and how many rows (both
    sides) found no partner.  Pairs rather than rows in order: boxes whose scores differ by less than the
    runtimes' rounding (1e-5 apart here) may come out in either order."""
    worst, unpaired = 0.0, 0
    for mine, rows in zip(ours, theirs):
        mine, rows = np.asarray(mine, np.float64), np.asarray(rows, np.float64)
        rows = rows[rows[:, 4] > 0]
        if not len(mine) or not len(rows):
            unpaired += len(mine) + len(rows)
            continue
        distance = np.abs(mine[:, None, :4] - rows[None, :, :4]).max(-1)  # (ours, theirs)
        distance[mine[:, None, 5] != rows[None, :, 5]] = np.inf
        nearest = distance.argmin(1)
        close = distance[np.arange(len(mine)), nearest] <= 1e-3 * np.abs(mine[:, :4]).max()
        candidates = np.flatnonzero(close)
        paired = candidates[np.unique(nearest[candidates], return_index=True)[1]]  # one partner per row of theirs
        unpaired += len(mine) + len(rows) - 2 * len(paired)
        if len(paired):
            worst = max(worst, relative_difference(mine[paired, :4], rows[nearest[paired], :4]),
                        relative_difference(mine[paired, 4], rows[nearest[paired], 4]))
    return worst, unpaired


def yolo_rows(name: str, batch: int, workdir: Path) -> tuple[list[Row], int, float]:
    """The raw and detections rows of a YOLO model (see the module docstring), built and checked."""
    import torchvision.ops
    import yolo_reference
    from ultralytics.utils.nms import TorchNMS, non_max_suppression
    builder, argument = YOLO_REFERENCES[name]
    reference = condition_yolo(getattr(yolo_reference, builder)(argument))
    torchvision.ops.nms = TorchNMS.nms  # ultralytics' own NMS, what it runs where torchvision is absent
    size = fm.weights_info(name).crop_size
    variables = fm.convert_state_dict(name, yolo_reference.state_dict_numpy(reference))
    images = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)  # pixels / 255
    images_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    images_torch = torch.from_numpy(images_nchw)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        reference(images_torch)
    expected = yolo_reference.predictions(reference, images)  # (N, A, 4 + nc), the unfused model
    fused = as_ultralytics(reference, workdir / "unused.pt").fuse(verbose=False)  # as ultralytics' predictor runs it

    def run_torch() -> "torch.Tensor":
        with torch.inference_mode():
            return fused(images_torch)[0]

    def run_torch_detect() -> list:
        with torch.inference_mode():
            return non_max_suppression(fused(images_torch)[0], **YOLO_PREDICT)

    rows = []
    for outputs in ("raw", "detections"):
        folder = workdir / outputs
        post = outputs == "detections"
        start = time.perf_counter()
        ours = (compile_detect(name, variables, batch, size) if post
                else fm.compile_inference(name, variables, batch_size=batch, image_size=size))
        compile_s = time.perf_counter() - start
        runners: dict[str, Runner] = {"flax-mobilenet": lambda ours=ours: jax.block_until_ready(ours(images))}
        unavailable: dict[str, str] = {}
        start = time.perf_counter()
        export_model(name, variables, folder / "onnx", batch_size=batch if post else None, image_size=size,
                     format="onnx", postprocess=post)
        export_s = time.perf_counter() - start
        our_session = onnx_export.session(str(folder / "onnx" / "model.onnx"), threads=os.cpu_count() or 1)
        runners["our-onnx"] = lambda session=our_session: session.run(None, {"images": images})
        errors = {}
        path, note = ultralytics_onnx(reference, batch, size, folder / "ultralytics", nms=post)
        session = ort_session(path)
        runners["onnxruntime"] = lambda session=session: session.run(None, {"images": images_nchw})
        if post:
            runners["pytorch"] = run_torch_detect
            unavailable["our-tflite"] = NO_TFLITE_NMS
            detections = detection_rows(arrays(ours(images)))
            for key, theirs in (("our-onnx", detection_rows(runners["our-onnx"]())),
                                ("pytorch", [d.numpy() for d in run_torch_detect()]),
                                ("onnxruntime", runners["onnxruntime"]()[0])):
                errors[key], unpaired = detections_difference(detections, theirs)
                if unpaired and key == "onnxruntime":  # its NMSModel rounds the IoUs otherwise (see below)
                    total = sum(map(len, detections)) + int((theirs[..., 4] > 0).sum())
                    note += f"; {unpaired} of {total} boxes (ours + its) without a partner at batch {batch}"
                elif unpaired:
                    errors[key] = float("inf")
                    print(f"{key}: {unpaired} boxes unpaired against ours", file=sys.stderr)
        else:
            export_model(name, variables, folder / "tflite", batch_size=batch, image_size=size, format="tflite",
                         postprocess=False)
            runners["pytorch"] = run_torch
            runners["our-tflite"] = tflite_runner(folder / "tflite" / "model.tflite", images, ("predictions",))
            got = {"flax-mobilenet": runners["flax-mobilenet"]()["predictions"],
                   "our-onnx": runners["our-onnx"]()[0], "our-tflite": runners["our-tflite"]()[0],
                   "onnxruntime": runners["onnxruntime"]()[0].transpose(0, 2, 1),
                   "pytorch": run_torch().numpy().transpose(0, 2, 1)}
            errors = {key: relative_difference(value, expected) for key, value in got.items()}
        rows.append(Row(outputs, runners, unavailable, errors, compile_s, export_s, note))
    return rows, size, counter.get_total_flops() / 1e9


def benchmark(name: str, batch: int, rounds: int, calls: int, workdir: Path, timed: tuple[str, ...] = RUNNERS) -> dict:
    if name in YOLO_REFERENCES:
        rows, size, gflop = yolo_rows(name, batch, workdir)
    else:
        rows, size, gflop = reference_rows(name, batch, workdir)
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
    return dict(name=name, batch=batch, size=size, gflop=gflop, rows=[
        dict(outputs=row.outputs, compile_s=row.compile_s, export_s=row.export_s, errors=row.errors, note=row.note,
             error=max(row.errors.values()), unavailable=row.unavailable,
             **{key: statistics.median(times[row.outputs, key]) * 1e3 for key in row.runners if key in timed})
        for row in rows])


def reference_rows(name: str, batch: int, workdir: Path) -> tuple[list[Row], int, float]:
    """The rows of a torchvision or timm model, built and checked."""
    reference = ModelOutputs(reference_model(name)).eval()  # torch.onnx.export restores the mode it finds
    task = fm.model_spec(name).task
    size = fm.weights_info(name).crop_size
    variables = fm.convert_state_dict(name, reference.model.state_dict())
    images = np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        expected = [o.numpy() for o in reference(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))]
    expected = [e.transpose(0, 2, 3, 1) if e.ndim == 4 else e for e in expected]  # ours are NHWC
    rows = [build_row(name, outputs, reference, variables, images, expected, workdir) for outputs in OUTPUTS[task]]
    return rows, size, counter.get_total_flops() / 1e9


def run_cell_in_own_process(name: str, batch: int, args: argparse.Namespace) -> dict:
    """A fresh process per cell: no cell inherits another's heap, thread pools or malloc settings."""
    rounds = dict(args.batch_rounds or ()).get(batch, args.rounds)
    command = [sys.executable, __file__, "--cell", f"{name}:{batch}", "--rounds", str(rounds),
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
    parser.add_argument("--batch-rounds", nargs="+", metavar="BATCH:ROUNDS",
                        type=lambda text: tuple(int(part) for part in text.split(":")),
                        help="rounds for a batch size instead of --rounds (e.g. 8:4: YOLO at 640 is heavy at batch 8)")
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
          "| our TFLite / ORT | ours, our ONNX, PyTorch / model only | ours GFLOP/s (% peak) | compile s | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reasons: dict[str, dict[str, None]] = {}
    notes: dict[str, list[str]] = {}
    for name in args.models:
        for batch in args.batches or DEFAULT_BATCHES[fm.model_spec(name).task]:
            cell = run_cell_in_own_process(name, batch, args)
            model_only = cell["rows"][0]
            for r in cell["rows"]:
                if r["note"]:
                    notes.setdefault(r["note"], []).append(f"{name} batch {batch}")
                for key, reason in r["unavailable"].items():
                    reasons.setdefault(reason, {})[f"{key} ({name} {r['outputs']})"] = None
                ms = lambda key: f"{r[key]:.2f}" if key in r else "n/a" if key in r["unavailable"] else "-"  # noqa: E731
                ratio = lambda a, b: f"{r[a] / r[b]:.2f}x" if a in r and b in r else "-"  # noqa: E731
                # vs the model alone: what the post-processing costs, for each runtime that runs both
                extra = (" / ".join(f"{r[k] / model_only[k]:.2f}x" if k in r and k in model_only else "-"
                                    for k in ("flax-mobilenet", "our-onnx", "pytorch")) if r is not model_only else "-")
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
    for note, cells in notes.items():
        print(f"Reference ONNX, {', '.join(cells)}: {note}")


if __name__ == "__main__":
    main()
