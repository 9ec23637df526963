"""What a registered name's reference weights expect at evaluation: the resize, crop, interpolation,
mean/std and label set they were evaluated with (torchvision's weight transforms, timm's pretrained_cfg).

The one home of these facts: `predict.py`, `export.json` and the training eval pipeline read them here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
# torchvision's _VOC_CATEGORIES: the label set ('voc') of its COCO_WITH_VOC_LABELS segmentation weights.
VOC_LABELS = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
              "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
              "tvmonitor")
# torchvision's _COCO_CATEGORIES: the label set ('coco') of its COCO detection weights, 91 entries indexed by
# COCO category id ('__background__' at 0, 'N/A' for the ids COCO leaves unused).
COCO_LABELS = ("__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
               "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
               "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
               "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
               "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
               "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
               "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
               "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
               "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
               "scissors", "teddy bear", "hair drier", "toothbrush")
# ultralytics' 80 COCO classes (its coco.yaml names, indexed 0..79): torchvision's categories without the unused ids.
COCO80_LABELS = tuple(name for name in COCO_LABELS[1:] if name != "N/A")
# The label sets of reference weights besides ImageNet's, by `WeightsInfo.labels`; 'voc20' is VOC without the
# background (YOLO models count classes from 0).
LABEL_SETS = {"voc": VOC_LABELS, "coco": COCO_LABELS, "coco80": COCO80_LABELS, "voc20": VOC_LABELS[1:]}
RESIZE_MODES = ("shorter", "fixed", "letterbox")


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    resize_size: int  # shorter side before the center crop
    crop_size: int  # the evaluated image size (without center_crop: the nominal square size, = resize_size)
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN  # inputs are (x / 255 - mean) / std
    std: tuple[float, float, float] = IMAGENET_STD
    labels: str = "imagenet1k"
    reference: str = ""  # which published weights these facts describe
    center_crop: bool = True  # False: the resized image is evaluated whole (torchvision's SemanticSegmentation)
    # 'shorter': the shorter side is resized to resize_size (aspect kept); 'fixed': the image is resized to
    # crop_size x crop_size, aspect not kept, and not cropped (torchvision's detection transform with fixed_size);
    # 'letterbox': ultralytics' LetterBox (aspect kept, scaled to fit crop_size, padded with grey 114 to a multiple
    # of 32 in predict, to crop_size x crop_size in exports).
    resize_mode: str = "shorter"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.resize_mode != "shorter" and (self.center_crop or self.resize_size != self.crop_size):
            raise ValueError(f"resize_mode {self.resize_mode!r} fits the image into crop_size x crop_size: it takes "
                             "center_crop=False and resize_size == crop_size")
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size {self.resize_size} < crop_size {self.crop_size}")

    def at_size(self, crop_size: Optional[int]) -> "WeightsInfo":
        """The same transform for another crop size, keeping the resize/crop ratio."""
        if crop_size is None or crop_size == self.crop_size:
            return self
        return dataclasses.replace(self, crop_size=crop_size,
                                   resize_size=round(crop_size * self.resize_size / self.crop_size))

    def describe(self) -> str:
        scale = ("scale to [0, 1]" if self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)
                 else "scale to [0, 1], subtract mean, divide by std")
        if self.resize_mode == "fixed":
            return (f"RGB, resize to {self.crop_size}x{self.crop_size} ({self.interpolation}, aspect not kept), "
                    f"no crop, {scale}")
        if self.resize_mode == "letterbox":
            return (f"letterbox to {self.crop_size}x{self.crop_size} as ultralytics' LetterBox (aspect kept, "
                    f"{self.interpolation} resize, centred grey 114 padding), RGB, {scale}")
        crop = f"center crop {self.crop_size}, " if self.center_crop else "no crop, "
        return f"RGB, resize shorter side to {self.resize_size} ({self.interpolation}), {crop}{scale}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def torchvision_weights(reference: str, resize_size: int = 256, crop_size: int = 224) -> WeightsInfo:
    """torchvision's ImageClassification transform: bilinear resize, center crop, ImageNet mean/std."""
    return WeightsInfo(resize_size, crop_size, "bilinear", reference=reference)


def timm_weights(reference: str, crop_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bicubic",
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> WeightsInfo:
    """timm's eval transform from a pretrained_cfg: resize to floor(crop / crop_pct), then center crop."""
    return WeightsInfo(math.floor(crop_size / crop_pct), crop_size, interpolation, tuple(mean), tuple(std),
                       reference=reference)


def torchvision_segmentation_weights(reference: str, resize_size: int = 520) -> WeightsInfo:
    """torchvision's SemanticSegmentation transform: bilinear resize of the shorter side, no crop, ImageNet
    mean/std; the VOC label set (COCO_WITH_VOC_LABELS weights)."""
    return WeightsInfo(resize_size, resize_size, "bilinear", labels="voc", reference=reference, center_crop=False)


def torchvision_detection_weights(reference: str, size: int = 320, mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
                                  std: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> WeightsInfo:
    """torchvision's SSDLite320 transform (GeneralizedRCNNTransform with fixed_size=(size, size)): bilinear
    resize to size x size whatever the aspect (torch's interpolate on the [0, 1] float image, align_corners=False,
    no antialias: `heads.resize_bilinear`), no crop, then
    (x - mean) / std with SSDLite's 0.5/0.5 ([0, 1] -> [-1, 1]); the 91 COCO category ids ('coco' labels).
    Detected boxes come back in input pixels: scale them to the original image (`detection.rescale_detections`)."""
    return WeightsInfo(size, size, "bilinear", tuple(mean), tuple(std), labels="coco", reference=reference,
                       center_crop=False, resize_mode="fixed")


def ultralytics_weights(reference: str, size: int = 640, labels: str = "coco80") -> WeightsInfo:
    """ultralytics' transform: LetterBox to `size` (bilinear, grey 114 padding), pixels / 255 (mean 0, std 1);
    its 80 COCO classes ('coco80' labels, 0-based)."""
    return WeightsInfo(size, size, "bilinear", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), labels=labels, reference=reference,
                       center_crop=False, resize_mode="letterbox")
