"""Ultralytics-format detection datasets (`yolo:/path/data.yaml`): the data YAML, its image splits and their label
files read and validated into flat arrays, the way `dense_sources` reads COCO / VOC folders.

The format (ultralytics 8.4 `data/utils.py`: `check_det_dataset`, `img2label_paths`, `verify_image_label`;
`data/base.py`: `get_img_files`), and where this reader differs:

- The YAML holds `train` and `val` (a `validation` key is renamed to `val`, with a warning), optionally `test`,
  and `names` (a list, or a dict index -> name covering 0..n-1) and/or `nc` (integer-like; with `names` the two
  must agree; `nc` alone names the classes class_0 ...).  `kpt_shape` (pose datasets) lets rows carry keypoint
  columns, which are dropped as ultralytics does for a detection task.
- `path` is the dataset root; absent, the YAML's folder.  A relative `path` is read against the YAML's folder
  (ultralytics reads it against the current directory, then its `datasets_dir` setting; we fall back to the
  current directory, with a warning, and do not know `datasets_dir`).  Each split is `root / value` resolved; a
  string starting with '../' that does not exist is retried without it (ultralytics' rule).
- A split entry is a folder (every image below it, recursively, hidden files excepted: ultralytics'
  `glob('**/*.*')`), a text file listing one image per line ('./x' is relative to the text file, other relative
  paths to the current directory, as ultralytics), or a list of those; the images of a split are sorted.
  Images are those `tf.io.decode_image` reads (`IMAGE_SUFFIXES`); images in the other formats
  ultralytics takes (.tif, .heic, ...) and list lines that are not images are skipped with a warning.
- Labels: the image path with its last '/images/' replaced by '/labels/' and the suffix by '.txt'; one row
  `class cx cy w h` per box, normalised to the image size.  A missing or empty label file is a background image.
  Rows are checked as ultralytics does (5 columns, class an integer in [0, nc), coordinates within
  [-0.01, 1.01]: its 1 % tolerance), plus width and height > 0 and the box overlapping the image; segment
  (polygon) rows are not supported.  Where ultralytics skips a bad image with a warning, this raises: a
  `DatasetError` of one line naming the label file, the 1-based line and the fix (all problems of a split are
  counted, the first is shown).  Duplicate rows are removed, as ultralytics does, with a warning.
- Images are not opened at load: reading 100k headers takes tens of seconds, and ultralytics caches that in its
  labels .cache, which we do not write.  `check_image(path)` verifies one (the caller runs it on an image that
  fails to decode, to name the file and the problem); `YoloDataset.image_sizes(split)` (or
  `load_yolo_dataset(..., verify_images=True)`) verifies every image of a split and gives their sizes.

Warnings (duplicates removed, files skipped, a split without any label file, ...) are returned as strings in
`YoloDataset.warnings` for the caller to log; nothing is dropped without one.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from .sources import IMAGE_SUFFIXES, DatasetError, DatasetInfo, Source, decode_file, hold

PREFIX = "yolo:"
SPLITS = ("train", "val", "test")
TOLERANCE = 0.01  # ultralytics verify_image_label: coordinates in [-0.01, 1.01] pass
MIN_IMAGE_SIDE = 10  # ultralytics check_image: an image under 10 px a side is corrupt
# ultralytics IMG_FORMATS that tf.io.decode_image cannot read: skipped with a warning
OTHER_ULTRALYTICS_SUFFIXES = {".avif", ".dng", ".heic", ".heif", ".jp2", ".mpo", ".tif", ".tiff"}
DECODABLE_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"}  # PIL's names for what tf.io.decode_image reads
ORIENTATION_TAG = 0x0112
KEY_TYPES = {"path": (str,), "train": (str, list), "val": (str, list), "test": (str, list), "names": (list, dict)}
_FIELDS = ("cx", "cy", "width", "height")
_EXAMPLE = "--config.dataset=yolo:/data/mydata/data.yaml"


@dataclasses.dataclass(frozen=True)
class YoloSplit:
    """One split: its images, their label files and boxes as flat arrays, image i owning rows
    offsets[i]:offsets[i + 1] (the layout of `dense_sources.Annotations`)."""

    name: str
    images: np.ndarray  # (N,) str paths, sorted
    label_files: np.ndarray  # (N,) str: where each image's labels are (or would be: backgrounds)
    boxes: np.ndarray  # (B, 4) float32 normalised cx, cy, w, h as written (within ultralytics' 1 % tolerance)
    classes: np.ndarray  # (B,) int32 in [0, nc)
    offsets: np.ndarray  # (N + 1,) int64
    backgrounds: int  # images without a box (label file missing or empty)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def counts(self) -> np.ndarray:
        """(N,) int64 boxes per image."""
        return np.diff(self.offsets)

    def boxes_of(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image `index`'s (K, 4) cxcywh boxes and (K,) classes."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.boxes[start:end], self.classes[start:end]


@dataclasses.dataclass
class YoloDataset:
    yaml_file: str
    root: str
    names: tuple[str, ...]
    splits: dict[str, YoloSplit]  # 'train', 'val' and, when the YAML has one, 'test'
    warnings: list[str]
    _sizes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def train(self) -> YoloSplit:
        return self.split("train")

    @property
    def val(self) -> YoloSplit:
        return self.split("val")

    def split(self, name: str) -> YoloSplit:
        if name not in self.splits:
            raise DatasetError(f"{self.yaml_file} has no split {name!r} (it has {', '.join(self.splits)})")
        return self.splits[name]

    def padded(self, split: str, max_boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The split's boxes as fixed-size arrays: boxes (N, max_boxes, 4) float32 normalised **xyxy** (x1, y1,
        x2, y2 as fractions of the image width / height, clipped to [0, 1]: multiply by (W, H, W, H) for the
        pixel boxes of `dense_sources`), zeros after the real ones; classes (N, max_boxes) int32 (0-based, -1 =
        padding); counts (N,) int32.  An image with more than `max_boxes` boxes raises (none is dropped)."""
        data = self.split(split)
        counts = data.counts
        over = np.flatnonzero(counts > max_boxes)
        if over.size:
            i = over[0]
            raise DatasetError(f"image {data.images[i]} has {counts[i]} boxes ({data.label_files[i]}), more than "
                               f"max_boxes={max_boxes} ({over.size} image(s) of split {split!r} do): raise "
                               f"config.max_boxes to at least {counts.max()} (--config.max_boxes={counts.max()})")
        n = len(data)
        cx, cy, w, h = data.boxes.T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).clip(0, 1).astype(np.float32)
        image = np.repeat(np.arange(n), counts)
        row = np.arange(len(data.classes)) - np.repeat(data.offsets[:-1], counts)
        boxes = np.zeros((n, max_boxes, 4), np.float32)
        classes = np.full((n, max_boxes), -1, np.int32)
        boxes[image, row] = xyxy
        classes[image, row] = data.classes
        return boxes, classes, counts.astype(np.int32)

    def image_sizes(self, split: str) -> np.ndarray:
        """(N, 2) int32 (height, width) of every image of the split as stored, each verified by `check_image`
        (header + PIL verify, no full decode: about 0.1-1 ms an image); computed once."""
        if split not in self._sizes:
            self._sizes[split] = np.array([check_image(p, decode=False) for p in self.split(split).images],
                                          np.int32).reshape(-1, 2)
        return self._sizes[split]


# ------------------------------------------------------------------------------------------------------ images
def check_image(path: str, decode: bool = True) -> tuple[int, int]:
    """(height, width) of the image at `path`, or a DatasetError naming the file, what is wrong and what to do:
    missing, not an image, corrupt or truncated (`decode` decodes it fully, which is what finds a truncated
    JPEG), a format tf.io.decode_image cannot read, smaller than 10 px a side (ultralytics rejects those), or an
    EXIF orientation (ultralytics, through OpenCV, applies it, so labels are drawn on the rotated view;
    tf.io.decode_image ignores it, which would misplace every box)."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    drop = "re-export it, or delete it and its label file"
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
            image.verify()  # must come first after open
        with Image.open(path) as image:
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            if decode:
                image.load()
    except FileNotFoundError:
        raise DatasetError(f"image {path} not found: restore it, or remove it from the dataset") from None
    except (UnidentifiedImageError, ImportError):  # ImportError: an opener PIL tried (e.g. a HEIF plugin) is absent
        raise DatasetError(f"image {path} is not an image PIL can read (corrupt, or not an image): {drop}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise DatasetError(f"image {path} is corrupt ({type(e).__name__}: {detail}): {drop}") from None
    if kind not in DECODABLE_FORMATS:
        raise DatasetError(f"image {path} is a {kind} file, which tf.io.decode_image cannot read: convert it to JPEG "
                           f"or PNG")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise DatasetError(f"image {path} is {width}x{height} px; under {MIN_IMAGE_SIDE} px a side ultralytics treats "
                           f"an image as corrupt: delete it and its label file")
    if orientation not in (0, 1):
        raise DatasetError(f"image {path} has EXIF orientation {orientation}, which tf.io.decode_image ignores while "
                           f"the labels are relative to the rotated view: save it with the rotation applied "
                           f"(PIL.ImageOps.exif_transpose) and no orientation tag")
    return height, width


# ------------------------------------------------------------------------------------------------------- load
def load_yolo_dataset(spec: str, verify_images: bool = False) -> YoloDataset:
    """`yolo:/path/data.yaml` (or the path alone, or a folder holding exactly one YAML) read and validated.
    `verify_images` runs `check_image` over every image (sizes then come from `image_sizes` for free)."""
    spec = os.fspath(spec)
    file = Path(spec[len(PREFIX):] if spec.startswith(PREFIX) else spec).expanduser()
    if file.is_dir():
        found = sorted(p for p in file.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if len(found) != 1:
            raise DatasetError(f"dataset folder {file} holds {len(found)} YAML files "
                               f"({', '.join(p.name for p in found)}), not one: name the data YAML, {_EXAMPLE}")
        file = found[0]
    if not file.is_file():
        raise DatasetError(f"data YAML {file} not found: pass the ultralytics dataset YAML (with path, train, val and "
                           f"names), {_EXAMPLE}")
    file = file.resolve()
    data = _read_yaml(file)
    warnings: list[str] = []
    if "val" not in data and "validation" in data:  # ultralytics renames it, with a warning
        data["val"] = data.pop("validation")
        warnings.append(f"{file}: key 'validation' read as 'val' (ultralytics' name)")
    for key in ("train", "val"):
        if not data.get(key):
            state = "is empty" if key in data else "is missing"
            raise DatasetError(f"data YAML {file}: {key!r} {state}: 'train' and 'val' name the image folders or lists "
                               f"of the splits, e.g. '{key}: images/{key}'")
        if not isinstance(data[key], (str, list)):
            raise DatasetError(f"data YAML {file}: {key!r} must be a string or a list, not {type(data[key]).__name__} "
                               f"({data[key]!r})")
    names = _names(file, data)
    root = _root(file, data, warnings)
    keypoint_columns = _keypoint_columns(file, data)
    if data.get("channels") not in (None, 3):
        warnings.append(f"{file}: channels: {data['channels']} ignored: images are decoded as RGB")
    splits = {}
    for name in SPLITS:
        if name == "test" and not data.get("test"):
            continue
        images, list_warnings = _split_images(file, root, name, data[name], bool(data.get("download")))
        warnings += list_warnings
        splits[name] = _read_split(name, images, len(names), keypoint_columns, warnings)
    dataset = YoloDataset(str(file), str(root), names, splits, warnings)
    if verify_images:
        for name in splits:
            dataset.image_sizes(name)
    return dataset


def _read_yaml(file: Path) -> dict:
    import yaml

    try:
        with open(file, encoding="utf-8-sig") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise DatasetError(f"data YAML {file} is not valid YAML{where} ({problem}): fix the syntax") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"data YAML {file} cannot be read ({e}): check its permissions and that it is UTF-8 text"
                     ) from None
    if not isinstance(data, dict):
        raise DatasetError(f"data YAML {file} is not a mapping of keys (path, train, val, names): it holds a "
                           f"{type(data).__name__}; see https://docs.ultralytics.com/datasets/detect/")
    for key, types in KEY_TYPES.items():
        if data.get(key) is not None and not isinstance(data[key], types):
            expected = " or ".join("a string" if t is str else f"a {t.__name__}" for t in types)
            raise DatasetError(f"data YAML {file}: {key!r} must be {expected}, not {type(data[key]).__name__} "
                               f"({data[key]!r})")
    return data


def _names(file: Path, data: dict) -> tuple[str, ...]:
    names, nc = data.get("names"), data.get("nc")
    if nc is not None or "nc" in data:
        try:
            if isinstance(nc, bool) or float(nc) != int(float(nc)):
                raise ValueError
            nc = int(float(nc))
        except (TypeError, ValueError):
            raise DatasetError(f"data YAML {file}: 'nc: {nc}' must be an integer (the number of classes)") from None
    if names is None:
        if nc is None:
            raise DatasetError(f"data YAML {file} has neither 'names' nor 'nc': add the class names, e.g. "
                               f"'names: [person, car]' or 'names: {{0: person, 1: car}}'")
        if nc < 1:
            raise DatasetError(f"data YAML {file}: 'nc: {nc}' must be at least 1")
        return tuple(f"class_{i}" for i in range(nc))
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"data YAML {file}: 'names' keys must be class indices 0..n-1, not "
                               f"{', '.join(repr(k) for k in names)}") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise DatasetError(f"data YAML {file}: 'names' keys {sorted(by_index)} must be 0..{len(by_index) - 1}, "
                               f"each once: renumber the classes (the label files use these indices)")
        names = [by_index[i] for i in range(len(by_index))]
    names = tuple(str(n) for n in names)
    if not names:
        raise DatasetError(f"data YAML {file}: 'names' is empty: list the class names, e.g. 'names: [person, car]'")
    if nc is not None and nc != len(names):
        raise DatasetError(f"data YAML {file}: 'nc: {nc}' disagrees with the {len(names)} 'names': drop 'nc' or make "
                           f"it {len(names)}")
    return names


def _keypoint_columns(file: Path, data: dict) -> int:
    shape = data.get("kpt_shape")
    if shape is None:
        return 0
    if (not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape)):
        raise DatasetError(f"data YAML {file}: 'kpt_shape: {shape}' must be [keypoints, dims], e.g. [17, 3]")
    return shape[0] * shape[1]


def _root(file: Path, data: dict, warnings: list[str]) -> Path:
    raw = data.get("path")
    if not raw:
        return file.parent
    path = Path(raw).expanduser()
    if not path.is_absolute():
        beside = file.parent / path
        if beside.exists():
            path = beside
        elif path.exists():
            warnings.append(f"{file}: path: {raw!r} read against the current directory ({path.resolve()}), as "
                            f"ultralytics does, since the YAML's folder holds no {raw!r}")
        else:
            raise DatasetError(f"data YAML {file}: path: {raw!r} not found in the YAML's folder ({beside}) nor the "
                               f"current directory (ultralytics would also try its datasets_dir setting): give the "
                               f"dataset root as an absolute path")
    path = path.resolve()
    if not path.is_dir():
        raise DatasetError(f"data YAML {file}: path: {raw!r} ({path}) is not a folder: give the dataset root")
    return path


def _split_images(file: Path, root: Path, split: str, value, download: bool) -> tuple[list[str], list[str]]:
    """The sorted image paths of one split (`value`: a folder, a list file or a list of those), and warnings."""
    if isinstance(value, str):
        source = (root / value).resolve()
        if not source.exists() and value.startswith("../"):
            source = (root / value[3:]).resolve()
        sources = [(value, source)]
    else:
        if any(not isinstance(v, str) for v in value):
            raise DatasetError(f"data YAML {file}: {split!r} must list folders or image-list files as strings, not "
                               f"{value}")
        sources = [(v, (root / v).resolve()) for v in value]
    suffixes = IMAGE_SUFFIXES
    images, warnings = [], []
    for raw, source in sources:
        if source.is_dir():
            found = glob.glob(os.path.join(glob.escape(str(source)), "**", "*.*"), recursive=True)
            kept = [p for p in found if os.path.splitext(p)[1].lower() in suffixes]
            other = [p for p in found if os.path.splitext(p)[1].lower() in OTHER_ULTRALYTICS_SUFFIXES]
            if other:
                kinds = sorted({os.path.splitext(p)[1].lower() for p in other})
                warnings.append(f"split {split!r}: skipped {len(other)} image(s) in {source} in formats "
                                f"tf.io.decode_image cannot read ({', '.join(kinds)}), e.g. {sorted(other)[0]}: "
                                f"convert them to JPEG or PNG to use them")
            if not kept:
                raise DatasetError(f"split {split!r} ({split}: {raw!r} in {file}): folder {source} holds no images "
                                   f"({', '.join(sorted(suffixes))}): put the images there, or fix the path")
            images += kept
        elif source.is_file() and source.suffix.lower() in suffixes:
            images.append(str(source))
        elif source.is_file():
            images += _list_file(source, split, suffixes, warnings)
        else:
            hint = " (the YAML has a 'download' entry: ultralytics would download it; fetch the data first)" \
                if download else ""
            raise DatasetError(f"split {split!r}: {source} does not exist ({split}: {raw!r} in {file}, read against "
                               f"{root}){hint}: fix the path or the YAML's 'path'")
    return sorted(images), warnings


def _list_file(source: Path, split: str, suffixes: set[str], warnings: list[str]) -> list[str]:
    """ultralytics get_img_files for a text file: a path a line, './x' relative to the file's folder."""
    try:
        with open(source, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"split {split!r}: image list {source} cannot be read ({e}): it must be UTF-8 text, one "
                           f"image path a line") from None
    parent = str(source.parent) + os.sep
    images, skipped = [], []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry:
            continue
        path = entry.replace("./", parent, 1) if entry.startswith("./") else entry
        if os.path.splitext(path)[1].lower() not in suffixes:
            skipped.append((number, entry))
            continue
        path = os.path.abspath(path)  # not resolved: the label file is found from the path as written
        if not os.path.isfile(path):
            raise DatasetError(f"split {split!r}: image list {source} line {number}: {path} not found: fix the line "
                               f"('./x' is relative to the list's folder, other relative paths to the current "
                               f"directory)")
        images.append(path)
    if skipped:
        number, entry = skipped[0]
        warnings.append(f"split {split!r}: skipped {len(skipped)} line(s) of {source} that are not images tf.io."
                        f"decode_image reads ({', '.join(sorted(suffixes))}), first line {number}: {entry!r}")
    if not images:
        raise DatasetError(f"split {split!r}: image list {source} lists no images: one image path a line "
                           f"('./images/x.jpg' relative to the list file)")
    return images


# ----------------------------------------------------------------------------------------------------- labels
def label_path(image: str) -> str:
    """ultralytics img2label_paths: the last '/images/' -> '/labels/', the suffix -> '.txt'."""
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return b.join(image.rsplit(a, 1)).rsplit(".", 1)[0] + ".txt"


def _read_split(name: str, images: list[str], nc: int, keypoint_columns: int, warnings: list[str]) -> YoloSplit:
    labels = [label_path(p) for p in images]
    problems: list[str] = []
    rows: list[tuple] = []
    offsets = [0]
    found = duplicates = duplicate_files = pose_rows = 0
    first_duplicate: Optional[str] = None
    for label_file in labels:
        result = _read_label_file(label_file, nc, keypoint_columns, problems)
        if result is not None:
            found += 1
            file_rows, removed, poses = result
            rows += file_rows
            pose_rows += poses
            if removed:
                duplicates += removed
                duplicate_files += 1
                first_duplicate = first_duplicate or f"{label_file} ({removed})"
        offsets.append(len(rows))
    if problems:
        more = len(problems) - 1
        raise DatasetError(problems[0] + (f" [and {more} more label problem(s) in split {name!r}: fix them all]" if more
                                    else ""))
    if duplicates:
        warnings.append(f"split {name!r}: removed {duplicates} duplicate label row(s) in {duplicate_files} file(s), "
                        f"as ultralytics does, e.g. {first_duplicate}")
    if pose_rows:
        warnings.append(f"split {name!r}: kept only the box of {pose_rows} pose row(s) (keypoint columns dropped, "
                        f"as ultralytics does for detection)")
    if not found:
        warnings.append(f"split {name!r}: none of its {len(images)} images has a label file (looked for "
                        f"{labels[0]} for {images[0]}): all are backgrounds; labels belong in a 'labels' folder "
                        f"beside 'images', same relative path, '.txt'")
    table = np.array(rows, np.float64).reshape(-1, 5)
    offsets = np.array(offsets, np.int64)
    return YoloSplit(name, np.array(images, dtype=str), np.array(labels, dtype=str),
                     table[:, 1:].astype(np.float32), table[:, 0].astype(np.int32), offsets,
                     int(np.sum(np.diff(offsets) == 0)))


def _show(line: str, limit: int = 60) -> str:
    line = line.strip()
    return repr(line if len(line) <= limit else line[:limit] + "...")


def _read_label_file(label_file: str, nc: int, keypoint_columns: int, problems: list[str]
                     ) -> Optional[tuple[list[tuple], int, int]]:
    """The unique valid rows of one label file (None: no file), duplicates removed, pose rows cut to their box;
    each bad row appends one line to `problems`."""
    try:
        with open(label_file, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"label file {label_file} cannot be read ({type(e).__name__}: {e}): it must be UTF-8 text, "
                        f"rows 'class cx cy w h'")
        return [], 0, 0
    rows, seen, removed, poses = [], set(), 0, 0
    low, high = -TOLERANCE, 1 + TOLERANCE
    for number, line in enumerate(text.splitlines(), 1):
        values = line.split()
        if not values:
            continue
        if len(values) != 5 and keypoint_columns and len(values) == 5 + keypoint_columns:
            values, poses = values[:5], poses + 1
        if len(values) == 5:
            try:
                c, cx, cy, w, h = map(float, values)
            except ValueError:
                c = math.nan  # the slow path below names the value
            # the common case in one expression (NaN and inf fail it); `_row_problem` explains a failure
            if (0 <= c < nc and c == int(c) and 0 < w <= high and 0 < h <= high and low <= cx <= high
                    and low <= cy <= high and cx + w / 2 > 0 and cx - w / 2 < 1 and cy + h / 2 > 0
                    and cy - h / 2 < 1):
                row = (int(c), cx, cy, w, h)
                if row in seen:
                    removed += 1
                else:
                    seen.add(row)
                    rows.append(row)
                continue
        problems.append(f"label file {label_file} line {number} ({_show(line)}): "
                        f"{_row_problem(values, nc, keypoint_columns)}")
    return rows, removed, poses


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _row_problem(values: list[str], nc: int, keypoint_columns: int) -> str:
    """What is wrong with a row that failed the fast check in `_read_label_file`, and the fix."""
    if len(values) > 6 and len(values) != 5 + keypoint_columns:
        pose = f" (nor a pose row: kpt_shape gives 5 + {keypoint_columns} values)" if keypoint_columns else ""
        return (f"{len(values)} values, a segment (polygon) row{pose}: segments are not supported, convert to boxes: "
                f"one 'class cx cy w h' row per object (the polygon's bounding box, e.g. "
                f"ultralytics.utils.ops.segments2boxes)")
    if len(values) != 5:
        return f"{len(values)} values, expected 5 (class cx cy w h): fix or delete the row"
    for value in values:
        if not _is_float(value):
            return f"{value!r} is not a number: rows are 'class cx cy w h' numbers"
    numbers = [float(v) for v in values]
    for value, number in zip(values, numbers):
        if not math.isfinite(number):
            return f"{value!r} is not a finite number: rows are 'class cx cy w h' numbers"
    c, cx, cy, w, h = numbers
    if c != int(c) or not 0 <= c < nc:
        return (f"class {values[0]} is not an integer in [0, {nc}) (the data YAML names {nc} classes): fix the class "
                f"id, or add the class to 'names'")
    for field, value, number in zip(_FIELDS[2:], values[3:], (w, h)):
        if number <= 0:
            return f"{field} {value} is not positive: give the box its size, or delete the row"
    for field, value, number in zip(_FIELDS, values[1:], (cx, cy, w, h)):
        if not -TOLERANCE <= number <= 1 + TOLERANCE:
            return (f"{field} {value} is outside [0, 1]: coordinates are fractions of the image width and height "
                    f"(ultralytics tolerates -0.01..1.01); divide pixel values by the image size")
    return "the box lies outside the image: fix or delete the row"


# --------------------------------------------------------------------------------------------------- the source
@dataclasses.dataclass
class YoloSource(Source):
    """A YOLO dataset as the pipeline's `Source` (detection): labels + 1 (0 is the padding / background row, as in
    every detection source here), boxes in pixels of the decoded image."""

    info: DatasetInfo
    dataset: YoloDataset
    max_boxes: int

    def reader(self, split: str) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
        boxes, classes, _ = self.dataset.padded(self._split(split), self.max_boxes)
        boxes, classes, paths = hold((boxes, classes, self.files(split)))

        def read(index):
            image = decode_file(tf.gather(paths, index))
            height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
            scale = tf.stack([width, height, width, height])
            return {"image": image, "mask": tf.zeros([0, 0], tf.uint8), "boxes": tf.gather(boxes, index) * scale,
                    "labels": tf.gather(classes, index) + 1}

        return read

    def files(self, split: str) -> np.ndarray:
        return self.dataset.split(self._split(split)).images

    def image_sizes(self, split: str) -> np.ndarray:
        return self.dataset.image_sizes(self._split(split))

    @staticmethod
    def _split(split: str) -> str:
        return "train" if split == "train" else "val"


def load(config, task: str) -> YoloSource:
    """`--config.dataset=yolo:/path/data.yaml`, checked whole (every box row; images when decoded)."""
    if task != "detection":
        raise DatasetError(f"dataset {config.dataset!r} holds boxes (ultralytics' detection format): it trains "
                           f"detection models (yolo*, ssdlite*), not a {task} model")
    dataset = load_yolo_dataset(config.dataset)
    for warning in dataset.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    for split in ("train", "val"):
        dataset.padded(split, config.max_boxes)  # an image with too many boxes is named now
    info = DatasetInfo(config.dataset, dataset.num_classes + 1, len(dataset.train), len(dataset.val), "train",
                       "val", ("__background__", *dataset.names), ("detection",))
    return YoloSource(info, dataset, config.max_boxes)
