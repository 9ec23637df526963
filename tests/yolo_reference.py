"""The PyTorch YOLO models our YOLO parity tests compare against (SPEC section 6).

- the official ones: ultralytics 8.4.190 `DetectionModel`s built from its YAMLs (`ultralytics_model`) and the
  `yolov5` 7.0.14 package's anchor-based `Model` (`yolov5_model`);
- the seeds' hybrids, assembled from the seeds' torch blocks (`tests/seed_modules.py`) and the packages' own
  modules, with state-dict keys as those codebases name them (`model.N.*`): seed 000's YOLOv5 v6.0 head on its
  MobileNetV3 (`seed000_model`) and seed 004's YOLOv8 head on its MobileNetV2 (`seed004_model`).

Every model comes randomized (`randomize_yolo_`) and in eval mode; builders are cached per arguments, so the
tests share one instance each: do not modify them (copy.deepcopy first).

Both packages go through torch_reference's torchvision stub (its compiled ops need a CUDA torch).  Where they
need `torchvision.ops.nms` (yolov5's `non_max_suppression`, and ultralytics' whenever "torchvision" is in
`sys.modules`, which the stub makes true) a pure-torch stand-in of torchvision's CPU kernel is installed.

Output layout of `predictions` (ours, NHWC in, numpy out):
- anchor-free heads (ultralytics `Detect`): (N, A, 4 + nc) = the eval output (N, 4 + nc, A) transposed:
  cx, cy, w, h in input pixels, then sigmoid class scores; anchors P3 -> P5, row-major.
- anchor-based heads (yolov5 `Detect`): (N, A, 5 + nc), the eval output as is: cx, cy, w, h, objectness, class
  scores, all sigmoid-derived; A in order (level, anchor, y, x).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import tempfile
import time
import warnings
from unittest import mock
from pathlib import Path

# Before ultralytics/yolov5 are first imported (they read these at import): no settings file in $HOME, no
# network, no pip auto-install, no INFO chatter (layer tables, "Creating new Ultralytics Settings ...").
_CONFIG_DIR = os.path.join(tempfile.gettempdir(), "flax_mobilenet_yolo_config")
os.makedirs(_CONFIG_DIR, exist_ok=True)
for _name, _value in (("YOLO_CONFIG_DIR", _CONFIG_DIR), ("YOLOV5_CONFIG_DIR", _CONFIG_DIR), ("YOLO_OFFLINE", "1"),
                      ("YOLO_AUTOINSTALL", "False"), ("YOLO_VERBOSE", "False"), ("YOLOv5_VERBOSE", "False")):
    os.environ.setdefault(_name, _value)

import numpy as np  # noqa: E402

import torch_reference  # noqa: E402  (installs the torchvision stub first)
from torch_reference import torch  # noqa: E402
from torch import nn  # noqa: E402

# yolov5 reads `torchvision.datasets`, `.transforms` and `.ops` as attributes of the (stub) package: import them.
import torchvision.datasets  # noqa: E402,F401
import torchvision.extension  # noqa: E402
import torchvision.ops  # noqa: E402
import torchvision.ops.boxes  # noqa: E402
import torchvision.transforms  # noqa: E402,F401


__all__ = ["torch", "randomize_yolo_", "ultralytics_model", "yolov5_model", "seed000_model", "seed004_model",
           "predictions", "state_dict_numpy", "ultralytics_nms", "yolov5_nms", "nms_standin", "GraphModel",
           "ULTRALYTICS_YAMLS", "UltralyticsDetect", "YOLOv5Detect"]


# ------------------------------------------------------------------------------------------ NMS stand-in

_NMS_PAIR_CHUNK = 1 << 22  # candidate pairs whose IoU is computed at once


def nms_standin(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's `nms` (its CPU kernel's result) in NumPy: visit boxes by decreasing score
    (stable sort), keep one unless a kept box overlaps it with IoU > iou_threshold; returns the kept indices
    (int64) by decreasing score.  The kernel's arithmetic in the boxes' dtype (intersection w * h, IoU = inter /
    ((area_i + area_j) - inter)), its comparison against a double threshold (NaN never suppresses).

    Only pairs that overlap along x can suppress each other (for a threshold >= 0), so the pairs come from a
    sweep over the boxes sorted by x1 (class-offset boxes, as both packages pass them, never meet across
    classes); the greedy pass then runs over the suppressing pairs in score order."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    dtype = np.float64 if boxes.dtype == torch.float64 else np.float32
    order = torch.sort(scores.detach().cpu(), dim=0, descending=True, stable=True).indices.numpy()
    b = boxes.detach().cpu().numpy().astype(dtype, copy=False)[order]  # rank order
    x1, y1, x2, y2 = (b[:, k].copy() for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    if iou_threshold < 0:  # even disjoint boxes suppress: every pair is a candidate
        by_x = np.arange(n)
        end = np.full(n, n)
    else:
        by_x = np.argsort(x1, kind="stable")
        end = np.searchsorted(x1[by_x], x2[by_x], side="left")  # first position whose x1 >= this box's x2
    counts = np.maximum(end - np.arange(n) - 1, 0)
    sources, targets = [], []
    position, cumulative = 0, np.cumsum(counts)
    while position < n:  # chunks of about _NMS_PAIR_CHUNK pairs
        stop = max(int(np.searchsorted(cumulative, cumulative[position] - counts[position] + _NMS_PAIR_CHUNK,
                                       side="right")), position + 1)
        c = counts[position:stop]
        total = int(c.sum())
        if total:
            p = np.repeat(np.arange(position, stop), c)
            q = p + 1 + np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            i, j = by_x[p], by_x[q]
            w = np.maximum(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]), dtype(0))
            h = np.maximum(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]), dtype(0))
            inter = w * h
            with np.errstate(divide="ignore", invalid="ignore"):
                iou = inter / ((area[i] + area[j]) - inter)
            hit = iou.astype(np.float64) > iou_threshold
            sources.append(np.minimum(i[hit], j[hit]))  # the higher-scored box of the pair
            targets.append(np.maximum(i[hit], j[hit]))
        position = stop
    alive = np.ones(n, dtype=bool)
    if sources:
        source, target = np.concatenate(sources), np.concatenate(targets)
        by_source = np.argsort(source, kind="stable")
        source, target = source[by_source], target[by_source]
        heads, starts = np.unique(source, return_index=True)
        for head, lo, hi in zip(heads.tolist(), starts.tolist(), [*starts[1:].tolist(), len(source)]):
            if alive[head]:  # final: only higher-scored boxes, all visited already, could suppress it
                alive[target[lo:hi]] = False
    return torch.from_numpy(order[alive]).to(boxes.device)


def _torchvision_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_standin(boxes, scores, float(iou_threshold))


if not torchvision.extension._has_ops():  # the compiled ops did not load: `torchvision.ops.nms` would raise
    torchvision.ops.nms = _torchvision_nms
    torchvision.ops.boxes.nms = _torchvision_nms  # what `batched_nms` calls


# ------------------------------------------------------------------------------------------ the packages

@contextlib.contextmanager
def _quiet():
    """Silence the packages' import-time and build-time chatter (pkg_resources deprecation, prints)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _one_thread():
    """Run torch on one intra-op thread, then restore the count.  These models are small: one thread is as
    fast (yolov8n at 2x64x96: 11 ms), and two OpenMP threads on a busy 2-core machine (pytest -n 2 runs two
    workers) spin at every barrier: 40 ms idle, 1-2 s under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


with _quiet():
    import ultralytics  # noqa: E402,F401
    from ultralytics.nn.modules import C2f, Concat as UltralyticsConcat, Conv as UltralyticsConv  # noqa: E402
    from ultralytics.nn.modules import SPPF  # noqa: E402
    from ultralytics.nn.modules.head import Detect as UltralyticsDetect  # noqa: E402
    from ultralytics.nn.tasks import DetectionModel as UltralyticsDetectionModel  # noqa: E402
    from ultralytics.utils.nms import non_max_suppression as _ultralytics_nms  # noqa: E402
    from ultralytics.utils.ops import make_divisible as _ultralytics_make_divisible  # noqa: E402
    from ultralytics.utils.torch_utils import initialize_weights as _ultralytics_initialize_weights  # noqa: E402

    import yolov5  # noqa: E402
    from yolov5.models.common import C3 as YOLOv5C3, Concat as YOLOv5Concat, Conv as YOLOv5Conv  # noqa: E402
    from yolov5.models.yolo import Detect as YOLOv5Detect, Model as YOLOv5Model  # noqa: E402
    from yolov5.utils.autoanchor import check_anchor_order as _yolov5_check_anchor_order  # noqa: E402
    from yolov5.utils.general import non_max_suppression as _yolov5_nms  # noqa: E402
    from yolov5.utils.torch_utils import initialize_weights as _yolov5_initialize_weights  # noqa: E402

    import seed_modules  # noqa: E402  (the seeds' torch blocks)

for _logger in ("ultralytics", "yolov5"):  # warnings only (e.g. "NMS time limit exceeded"), whoever imported first
    logging.getLogger(_logger).setLevel(logging.WARNING)

YOLOV5_YAML_DIR = Path(yolov5.__file__).parent / "models"  # yolov5n/s/m/l/x.yaml
ULTRALYTICS_YAMLS = ("yolov8n.yaml", "yolov8s.yaml", "yolov5nu.yaml", "yolo11n.yaml")
DETECT_STRIDES = (8.0, 16.0, 32.0)


# ------------------------------------------------------------------------------------------ randomization

def _frozen_entry(name: str) -> bool:
    """State entries that are constants of the architecture, not weights: ultralytics' DFL conv (arange(16))
    and yolov5's `anchors` buffer (grid units)."""
    return name.endswith("dfl.conv.weight") or name.endswith("anchors") or name == "anchors"


def randomize_yolo_(model: nn.Module, seed: int = 0) -> nn.Module:
    """torch_reference.randomize_ for YOLO models: biases and running means 0.1 * N(0, 1), BN scales 1 + 0.2 *
    N(0, 1), running variances U[0.5, 1.5), linear weights N(0, 1 / fan_in); conv weights keep their init, the
    DFL conv weight and yolov5's anchors are left untouched.  In place; returns the model in eval mode."""
    return torch_reference.randomize_(model, seed, keep=_frozen_entry)


# ------------------------------------------------------------------------------------------ official models

@functools.cache
def ultralytics_model(yaml_name: str, nc: int = 80) -> "UltralyticsDetectionModel":
    """ultralytics' `DetectionModel(yaml_name, nc=nc)`, randomized, eval.  'yolov5nu.yaml' is ultralytics'
    anchor-free YOLOv5 (cfg/models/v5/yolov5.yaml at scale n, v8 `Detect` head, legacy class branch)."""
    torch.manual_seed(0)  # conv weights keep their (seeded) default init
    with _quiet(), _one_thread():  # it probes the strides with a 256x256 forward
        model = UltralyticsDetectionModel(yaml_name, nc=nc, verbose=False)
    return randomize_yolo_(model)


@functools.cache
def yolov5_model(yaml_name: str = "yolov5n.yaml", nc: int = 80) -> "YOLOv5Model":
    """The `yolov5` 7.0.14 package's anchor-based `Model` from its own YAML (yolov5/models/), randomized, eval.

    Its constructor probes the strides in train mode (a fresh model's running_var is 0.9): randomization
    overwrites that, so compare through whole state dicts."""
    torch.manual_seed(0)
    with _quiet(), _one_thread():
        model = YOLOv5Model(str(YOLOV5_YAML_DIR / yaml_name), ch=3, nc=nc)
    return randomize_yolo_(model)


# ------------------------------------------------------------------------------------------ seeds' hybrids

class GraphModel(nn.Module):
    """ultralytics/yolov5 `_predict_once` over `self.model` (a ModuleList, so keys are `model.N.*`).

    Each layer has `f` (the output index it reads, -1 the previous one, or a list of them) as those codebases
    attach it.  Outputs are numbered as seed 004's patched `_predict_once` numbers them: a layer marked
    `backbone` that returns a list of maps adds them all (after a None when there are not 5: seed 004's
    MobileNetV2 returns 4 maps, so they become outputs 1..4), any other layer adds one output."""

    def __init__(self, layers: list[tuple[int | list[int], nn.Module]], stride: tuple[float, ...]):
        super().__init__()
        for i, (source, layer) in enumerate(layers):
            layer.f, layer.i = source, i
        self.model = nn.ModuleList(layer for _, layer in layers)
        self.stride = torch.tensor(stride)

    def forward(self, x):
        outputs = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            if getattr(layer, "backbone", False):
                maps = list(x)
                if len(maps) != 5:
                    maps.insert(0, None)
                outputs.extend(maps)
                x = maps[-1]
            else:
                outputs.append(x)
        return x


# Seed 000's YAMLs, backbone rows: MobileNetV3 [out, hidden, kernel, stride, use_se, use_hs] after the stem
# conv_bn_hswish(3, 16, stride 2).
_SEED000_BACKBONES = {
    "small": [
        (16, 16, 3, 2, 1, 0), (24, 72, 3, 2, 0, 0), (24, 88, 3, 1, 0, 0), (40, 96, 5, 2, 1, 1),
        (40, 240, 5, 1, 1, 1), (40, 240, 5, 1, 1, 1), (48, 120, 5, 1, 1, 1), (48, 144, 5, 1, 1, 1),
        (96, 288, 5, 2, 1, 1), (96, 576, 5, 1, 1, 1), (96, 576, 5, 1, 1, 1),
    ],
    "large": [
        (16, 16, 3, 1, 0, 0), (24, 64, 3, 2, 0, 0), (24, 72, 3, 1, 0, 0), (40, 72, 5, 2, 1, 0),
        (40, 120, 5, 1, 1, 0), (40, 120, 5, 1, 1, 0), (80, 240, 3, 2, 0, 1), (80, 200, 3, 1, 0, 1),
        (80, 184, 3, 1, 0, 1), (80, 184, 3, 1, 0, 1), (112, 480, 3, 1, 1, 1), (112, 672, 3, 1, 1, 1),
        (160, 672, 5, 1, 1, 1), (160, 960, 5, 2, 1, 1), (160, 960, 5, 1, 1, 1),
    ],
}
# Head rows [from, repeats, module, args] as the YAMLs write them (depth and width multiples 1.0).  The large
# YAML's indices are taken literally (SPEC 6): P3 = layer 6, P4 = 13, P5 = 15, Detect on 23/26/29.
_SEED000_HEADS = {
    "small": [
        (-1, 1, "Conv", (96, 1, 1)), (-1, 1, "Upsample", ()), ([-1, 8], 1, "Concat", ()), (-1, 3, "C3", (144,)),
        (-1, 1, "Conv", (144, 1, 1)), (-1, 1, "Upsample", ()), ([-1, 3], 1, "Concat", ()), (-1, 3, "C3", (168,)),
        (-1, 1, "Conv", (168, 3, 2)), ([-1, 16], 1, "Concat", ()), (-1, 3, "C3", (312,)),
        (-1, 1, "Conv", (312, 3, 2)), ([-1, 12], 1, "Concat", ()), (-1, 3, "C3", (408,)),
        ([19, 22, 25], 1, "Detect", ()),
    ],
    "large": [
        (-1, 1, "Conv", (256, 1, 1)), (-1, 1, "Upsample", ()), ([-1, 13], 1, "Concat", ()), (-1, 1, "C3", (256,)),
        (-1, 1, "Conv", (128, 1, 1)), (-1, 1, "Upsample", ()), ([-1, 6], 1, "Concat", ()), (-1, 1, "C3", (128,)),
        (-1, 1, "Conv", (128, 3, 2)), ([-1, 20], 1, "Concat", ()), (-1, 1, "C3", (256,)),
        (-1, 1, "Conv", (256, 3, 2)), ([-1, 16], 1, "Concat", ()), (-1, 1, "C3", (512,)),
        ([23, 26, 29], 1, "Detect", ()),
    ],
}
_YOLOV5_ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))


@functools.cache
def seed000_model(variant: str = "small", nc: int | None = None) -> GraphModel:
    """Seed 000: YOLOv5 v6.0 head (the `yolov5` package's Conv, C3, Concat, nn.Upsample, Detect) on the seed's
    MobileNetV3-Small or -Large, as yolov5's `Model` builds it: Detect strides [8, 16, 32], anchors divided by
    them, `_initialize_biases`, `initialize_weights` (BN eps 1e-3, momentum 0.03 everywhere); then randomized,
    eval.  nc defaults to the YAML's: 80 (small), 20 (large)."""
    if nc is None:
        nc = {"small": 80, "large": 20}[variant]
    torch.manual_seed(0)
    layers: list[tuple] = [(-1, seed_modules.conv_bn_hswish(3, 16, 2))]
    channels = [16]
    for out, hidden, kernel, stride, use_se, use_hs in _SEED000_BACKBONES[variant]:
        layers.append((-1, seed_modules.MobileNetV3(channels[-1], out, hidden, kernel, stride, use_se, use_hs)))
        channels.append(out)
    for source, repeats, kind, args in _SEED000_HEADS[variant]:
        c_in = channels[source] if isinstance(source, int) else None
        if kind == "Conv":
            layer, c_out = YOLOv5Conv(c_in, *args), args[0]
        elif kind == "C3":
            layer, c_out = YOLOv5C3(c_in, args[0], repeats, False), args[0]
        elif kind == "Upsample":
            layer, c_out = nn.Upsample(None, 2, "nearest"), c_in
        elif kind == "Concat":
            layer, c_out = YOLOv5Concat(1), sum(channels[j] for j in source)
        else:  # Detect
            layer, c_out = YOLOv5Detect(nc, [list(a) for a in _YOLOV5_ANCHORS], [channels[j] for j in source]), None
        layers.append((source, layer))
        channels.append(c_out)
    model = GraphModel(layers, DETECT_STRIDES)
    detect = model.model[-1]
    detect.stride = model.stride.clone()
    _yolov5_check_anchor_order(detect)
    detect.anchors /= detect.stride.view(-1, 1, 1)
    for conv, stride in zip(detect.m, detect.stride):  # yolov5 Model._initialize_biases
        bias = conv.bias.data.view(detect.na, -1)
        bias[:, 4] += math.log(8 / (640 / stride) ** 2)
        bias[:, 5:5 + nc] += math.log(0.6 / (nc - 0.99999))
    _yolov5_initialize_weights(model)
    return randomize_yolo_(model)


_SEED004_SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024)}
# Seed 004's YAML after the backbone (outputs 1..4 = strides 4, 8, 16, 32) and SPPF (output 5), with the
# `from` indices in its output numbering.
_SEED004_HEAD = [
    (-1, 1, "Upsample", ()), ([-1, 3], 1, "Concat", ()), (-1, 3, "C2f", (512,)),
    (-1, 1, "Upsample", ()), ([-1, 2], 1, "Concat", ()), (-1, 3, "C2f", (256,)),
    (-1, 1, "Conv", (256, 3, 2)), ([-1, 8], 1, "Concat", ()), (-1, 3, "C2f", (512,)),
    (-1, 1, "Conv", (512, 3, 2)), ([-1, 5], 1, "Concat", ()), (-1, 3, "C2f", (1024,)),
    ([11, 14, 17], 1, "Detect", ()),
]


@functools.cache
def seed004_model(scale: str = "n", nc: int = 80) -> GraphModel:
    """Seed 004: YOLOv8 head (ultralytics' SPPF, C2f, Conv, Concat, nn.Upsample, Detect with the legacy class
    branch) on the seed's MobileNetV2, with ultralytics' parse_model scaling; `model.0` backbone, `model.1`
    SPPF, ..., `model.14` Detect.  Detect strides [8, 16, 32] and `bias_init`, `initialize_weights` (BN eps
    1e-3, momentum 0.03 everywhere, the backbone's too); then randomized, eval."""
    depth, width, max_channels = _SEED004_SCALES[scale]

    def scaled(c: int) -> int:
        return int(_ultralytics_make_divisible(min(c, max_channels) * width, 8))

    torch.manual_seed(0)
    with _one_thread():  # it probes its channels with a forward
        backbone = seed_modules.MobileNetV2()
    backbone.backbone = True
    assert len(backbone.width_list) == 4, backbone.width_list
    channels = [0, *backbone.width_list]  # outputs 0..4 (0: the None seed 004 inserts)
    sppf = SPPF(channels[-1], scaled(1024), 5)
    sppf.cv1.act = UltralyticsConv.default_act  # parse_model activates cv1 for YAML rows with <= 3 args
    layers: list[tuple] = [(-1, backbone), (-1, sppf)]
    channels.append(scaled(1024))
    legacy = UltralyticsDetect.legacy
    try:
        UltralyticsDetect.legacy = True  # parse_model sets this class attribute for v3/v5/v8 YAMLs (C2f rows)
        for source, repeats, kind, args in _SEED004_HEAD:
            c_in = channels[source] if isinstance(source, int) else None
            if kind == "C2f":
                c_out = scaled(args[0])
                layer = C2f(c_in, c_out, max(round(repeats * depth), 1) if repeats > 1 else repeats)
            elif kind == "Conv":
                c_out = scaled(args[0])
                layer = UltralyticsConv(c_in, c_out, *args[1:])
            elif kind == "Upsample":
                layer, c_out = nn.Upsample(None, 2, "nearest"), c_in
            elif kind == "Concat":
                layer, c_out = UltralyticsConcat(1), sum(channels[j] for j in source)
            else:  # Detect
                layer, c_out = UltralyticsDetect(nc, 16, False, [channels[j] for j in source]), None
            layers.append((source, layer))
            channels.append(c_out)
    finally:
        UltralyticsDetect.legacy = legacy
    model = GraphModel(layers, DETECT_STRIDES)
    detect = model.model[-1]
    detect.stride = model.stride.clone()
    detect.bias_init()
    _ultralytics_initialize_weights(model)
    return randomize_yolo_(model)


# ------------------------------------------------------------------------------------------ running them

def _head(model: nn.Module) -> nn.Module:
    return model.model[-1]


def predictions(model: nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    """The model's eval output in our layout (see the module docstring), float32 numpy.

    Runs under torch.no_grad rather than inference_mode: the heads cache their anchor grids on the module,
    and inference tensors there would break a later autograd use of the same (shared) model."""
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images_nhwc, dtype=np.float32).transpose(0, 3, 1, 2)))
    head = _head(model)
    with torch.no_grad(), _one_thread():
        out = model(x)
    y = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(head, UltralyticsDetect):
        y = y.transpose(1, 2)  # (N, 4 + nc, A) -> (N, A, 4 + nc)
    elif not isinstance(head, YOLOv5Detect):
        raise TypeError(f"not a YOLO detection model: last layer {type(head).__name__}")
    return y.float().numpy().copy()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The state dict as numpy arrays, `num_batches_tracked` dropped (a training counter no conversion uses);
    yolov5's `anchors` buffer (grid units) and ultralytics' DFL conv weight (arange(16)) are kept."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in model.state_dict().items()
            if not name.endswith("num_batches_tracked")}


def _as_tensor(prediction) -> torch.Tensor:
    if isinstance(prediction, (tuple, list)):
        prediction = prediction[0]
    if isinstance(prediction, np.ndarray):
        prediction = torch.from_numpy(np.ascontiguousarray(prediction))
    return prediction


def ultralytics_nms(prediction, **kwargs) -> list[np.ndarray]:
    """ultralytics.utils.nms.non_max_suppression on ultralytics' layout (N, 4 + nc, A) (numpy or torch; the
    eval output `y`); per image an (n, 6) float32 array [x1, y1, x2, y2, score, class].  kwargs as the
    package's (conf_thres 0.25, iou_thres 0.45, multi_label False, max_det 300, agnostic, classes, ...).
    With the torchvision stub imported it calls `torchvision.ops.nms`, i.e. `nms_standin` (8.4.190 falls back
    to its own `TorchNMS.nms` only when torchvision was never imported)."""
    with torch.no_grad(), _one_thread():
        output = _ultralytics_nms(_as_tensor(prediction), **kwargs)
    if isinstance(output, tuple):  # return_idxs=True
        return [o.numpy() for o in output[0]], [k.numpy() for k in output[1]]
    return [o.numpy() for o in output]


def yolov5_nms(prediction, **kwargs) -> list[np.ndarray]:
    """yolov5.utils.general.non_max_suppression on the yolov5 layout (N, A, 5 + nc) (numpy or torch): scores
    are objectness * class; per image an (n, 6) float32 array [x1, y1, x2, y2, score, class].  kwargs as the
    package's (conf_thres 0.25, iou_thres 0.45, multi_label False, max_det 300, agnostic, classes).  It calls
    `torchvision.ops.nms`, i.e. `nms_standin`.  Its time limit (0.5 s + 0.05 s per image, a guard for GPUs) cuts the
    later images short when the NumPy stand-in is slower than that on a busy CPU, so the clock it reads is frozen
    during the call."""
    with torch.no_grad(), _one_thread(), mock.patch.object(time, "time", lambda: 0.0):
        output = _yolov5_nms(_as_tensor(prediction), **kwargs)
    return [o.numpy() for o in output]


def random_box_rows(rng, count: int, num_classes: int, height: int, width: int, widths: tuple, heights: tuple
                    ) -> list[list]:
    """`count` random [x1, y1, x2, y2, label] rows (labels 1..num_classes, the trainer's batch convention) of sides
    drawn from `widths` / `heights` around random centres, clipped to the image and at least 1 px."""
    rows = []
    for _ in range(count):
        w, h = rng.uniform(*widths), rng.uniform(*heights)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = max(cx - w / 2, 0), max(cy - h / 2, 0)
        x2, y2 = min(cx + w / 2, width), min(cy + h / 2, height)
        rows.append([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1), int(rng.integers(1, num_classes + 1))])
    return rows
