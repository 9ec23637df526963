"""Host input pipeline throughput: images/s (and per host core) of `Pipeline.train_batches` for each recipe.

Why: the accelerator's train step takes 10,000-24,000 img/s; a host that cannot feed it wastes it.  This measures
the pipeline as the trainer runs it (the run's `Experiment`, `train_batches`, batch 64 by default) on real-sized
photos (500x375-ish JPEGs cut from scikit-image's sample photos, randomly cropped, scaled, flipped and tinted) that
it writes into a temporary folder in the layout each recipe reads:

- v3_large, v3_small, v2: `folder:` (one folder per class), configs/<name>.py (ImageNet recipes);
- lraspp: a `coco:` folder with VOC-category polygons, configs/lraspp_coco_voc.py (segmentation);
- ssdlite: the same `coco:` folder read for boxes, configs/ssdlite_coco.py;
- yolo: ultralytics' `yolo:` layout (data.yaml, images/, labels/), configs/yolov8n_coco.py (mosaic);
- <recipe>_prepared: the same, read from `prepare.py`'s ArrayRecord shards (`prepared:`; training images reduced
  to the task's default side, e.g. a 224 classifier's shorter side to 256).

Per core = img/s / the cores this process may use (os.sched_getaffinity); per CPU-second = images / the CPU time
of this process (all threads), which other processes sharing the cores do not distort.  The first `--warmup` batches (tracing,
filling the prefetch buffers) are not timed; then `--rounds` rounds of `--batches` batches each, the median round
reported.  `--step` also times the recipe's jitted train step (device augmentation and normalisation included, as
the trainer builds it) on this machine's first device, and prints the pipeline / step throughput ratio (compiling
the step is slow on a CPU).

    python benchmarks/input_pipeline.py [--recipes v3_large v2 ...] [--images 512] [--batch 64] [--step]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# recipe -> (config file, dataset layout, config overrides); a '_prepared' recipe reads the layout through
# `prepare.py`'s shards (written once, its time not counted), with the task's default side
RECIPES = {
    "v3_large": ("v3_large", "folder", {}),
    "v3_small": ("v3_small", "folder", {}),
    "v2": ("v2", "folder", {}),
    # the ImageNet recipes with the crop's plain bilinear resize (augment.crop_antialias=False)
    "v3_large_plain": ("v3_large", "folder", {"crop_antialias": False}),
    "v2_plain": ("v2", "folder", {"crop_antialias": False}),
    "lraspp": ("lraspp_coco_voc", "coco", {}),
    "ssdlite": ("ssdlite_coco", "coco", {}),
    "yolo": ("yolov8n_coco", "yolo", {}),
}
RECIPES.update({f"{recipe}_prepared": RECIPES[recipe] for recipe in ("v3_large", "v2", "lraspp", "ssdlite", "yolo")})
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field",
           "immunohistochemistry", "moon", "page", "text", "cat", "brick", "grass", "gravel", "colorwheel")
SIZE = (375, 500)  # height, width: ImageNet's and COCO's typical photo
COCO_CLASSES = ((1, "person"), (18, "dog"), (3, "car"))  # VOC categories too, so segmentation keeps them


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=list(RECIPES))
    parser.add_argument("--images", type=int, default=512, help="generated photos per dataset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step", action="store_true", help="also time the train step and print the ratio")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------------- data
def _sample_photos() -> list[np.ndarray]:
    """scikit-image's bundled photos as RGB uint8 (the ones this install has without downloading)."""
    from skimage import data

    photos = []
    for name in SAMPLES:
        try:
            image = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(np.ptp(image), 1e-9)).astype(np.uint8)
        photos.append(image[..., :3])
    if not photos:
        raise RuntimeError("no scikit-image sample photo could be loaded")
    return photos


def _photo(photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A varied 500x375-ish photo: a random window of a sample, resized, maybe flipped, tinted."""
    from PIL import Image

    source = photos[rng.integers(len(photos))]
    h, w = source.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    top, left = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
    height, width = (SIZE if rng.random() < 0.75 else SIZE[::-1])
    height, width = int(height * rng.uniform(0.9, 1.1)), int(width * rng.uniform(0.9, 1.1))
    image = Image.fromarray(source[top:top + ch, left:left + cw]).resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, np.float32) * rng.uniform(0.7, 1.3, 3)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _objects(rng: np.random.Generator, height: int, width: int) -> list[tuple[int, list[float]]]:
    """1-4 (category, xywh) boxes of at least 40 px a side."""
    out = []
    for _ in range(rng.integers(1, 5)):
        w, h = rng.uniform(40, width * 0.8), rng.uniform(40, height * 0.8)
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        out.append((int(COCO_CLASSES[rng.integers(len(COCO_CLASSES))][0]), [x, y, w, h]))
    return out


def write_folder(root: Path, count: int, rng: np.random.Generator, photos: list[np.ndarray]) -> str:
    for i in range(count):
        _save_jpeg(_photo(photos, rng), root / f"class{i % 10}" / f"{i:05d}.jpg")
    return f"folder:{root}"


def write_coco(root: Path, count: int, rng: np.random.Generator, photos: list[np.ndarray]) -> str:
    """train2017 (all but 32) and val2017, polygon instances (boxes and masks)."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": i, "name": name, "supercategory": ""} for i, name in COCO_CLASSES]
    splits = {"train2017": range(count - 32), "val2017": range(count - 32, count)}
    ann_id = 0
    for split, indices in splits.items():
        data = {"images": [], "annotations": [], "categories": categories}
        for image_id in indices:
            pixels = _photo(photos, rng)
            height, width = pixels.shape[:2]
            name = f"{image_id:012d}.jpg"
            _save_jpeg(pixels, root / split / name)
            data["images"].append({"id": image_id + 1, "file_name": name, "width": width, "height": height})
            for category, (x, y, w, h) in _objects(rng, height, width):
                ann_id += 1
                polygon = [x, y + h / 2, x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h]  # a diamond
                data["annotations"].append({"id": ann_id, "image_id": image_id + 1, "category_id": category,
                                            "iscrowd": 0, "bbox": [x, y, w, h], "area": w * h / 2,
                                            "segmentation": [polygon]})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return f"coco:{root}"


def write_yolo(root: Path, count: int, rng: np.random.Generator, photos: list[np.ndarray]) -> str:
    for i in range(count):
        split = "val" if i >= count - 32 else "train"
        pixels = _photo(photos, rng)
        height, width = pixels.shape[:2]
        _save_jpeg(pixels, root / "images" / split / f"{i:05d}.jpg")
        rows = [f"{k % len(COCO_CLASSES)} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} "
                f"{h / height:.6f}" for k, (_, (x, y, w, h)) in enumerate(_objects(rng, height, width))]
        label = root / "labels" / split / f"{i:05d}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + "\n")
    names = ", ".join(name for _, name in COCO_CLASSES)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [{names}]\n")
    return f"yolo:{root / 'data.yaml'}"


WRITERS: dict[str, Callable[..., str]] = {"folder": write_folder, "coco": write_coco, "yolo": write_yolo}


# ---------------------------------------------------------------------------------------------- measuring
def load_config(name: str, dataset: str, batch: int):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.dataset, config.batch_size = dataset, batch
    if config.model.num_classes != -1:
        config.model.num_classes = -1  # the generated dataset's
    return config


def prepared_dataset(experiment, config, out: Path) -> str:
    """`prepare.py`'s shards of the experiment's dataset, at the task's default side: their dataset name."""
    from flax_mobilenet.training import prepare

    side = prepare.default_side(experiment.task_name, config, experiment.eval_transform)
    prepare.prepare(experiment.source, experiment.task_name, out, side, progress=False)
    return f"prepared:{out}"


def pipeline_rate(batches: Iterator[dict], batch: int, warmup: int, per_round: int, rounds: int
                  ) -> tuple[float, float]:
    """The medians over rounds of images/s and of images per CPU-second of this process (all its threads: what
    one core does, robust to other processes sharing the cores)."""
    for _ in range(warmup):
        next(batches)
    rates, cpu_rates = [], []
    for _ in range(rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(per_round):
            next(batches)
        rates.append(per_round * batch / (time.perf_counter() - start))
        cpu_rates.append(per_round * batch / (time.process_time() - cpu_start))
    return statistics.median(rates), statistics.median(cpu_rates)


def step_rate(experiment, config, batch: dict, repeats: int) -> float:
    """images/s of the recipe's jitted train step on one device, built as the trainer builds it."""
    import jax

    from flax_mobilenet.training import optim, steps

    model = experiment.build_model()
    task = experiment.task(model)
    schedule = optim.learning_rate_schedule(config, experiment.pipeline.steps_per_epoch(config.batch_size))
    params = jax.eval_shape(model.init, jax.random.key(0),
                            np.zeros((1, config.image_size, config.image_size, 3), np.float32))["params"]
    tx = optim.create_optimizer(config, schedule, params)
    state = jax.jit(functools.partial(steps.create_train_state, model, tx, image_size=config.image_size,
                                      use_ema=bool(config.ema_decay)))(jax.random.key(0))
    train_step = jax.jit(functools.partial(
        steps.train_step, model=model, task=task, tx=tx, schedule=schedule, ema_decay=config.ema_decay,
        ema_tau=config.ema_tau, prepare=experiment.pipeline.device_transform(train=True)), donate_argnums=0)
    batch = jax.device_put(batch)
    state, metrics = train_step(state, batch)  # compiles
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return len(batch["image"]) / statistics.median(times)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flax_mobilenet.training.experiment import Experiment

    cores = len(os.sched_getaffinity(0))
    photos = _sample_photos()
    rows = []
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as tmp:
        datasets: dict[str, str] = {}
        for recipe in args.recipes:
            config_name, layout, augment = RECIPES[recipe]
            if layout not in datasets:
                datasets[layout] = WRITERS[layout](Path(tmp) / layout, args.images, np.random.default_rng(0), photos)
            config = load_config(config_name, datasets[layout], args.batch)
            config.augment.update(augment)
            experiment = Experiment(config)
            if recipe.endswith("_prepared"):
                config.dataset = prepared_dataset(experiment, config, Path(tmp) / recipe)
                experiment = Experiment(config)
            batches = experiment.pipeline.train_batches(global_batch_size=args.batch, process_index=0,
                                                        process_count=1)
            rate, cpu_rate = pipeline_rate(batches, args.batch, args.warmup, args.batches, args.rounds)
            row = {"recipe": recipe, "config": f"configs/{config_name}.py" + "".join(
                f" augment.{k}={v}" for k, v in augment.items()), "rate": rate, "per_core": rate / cores,
                   "per_cpu_second": cpu_rate}
            if args.step:
                row["step"] = step_rate(experiment, config, next(batches), args.step_repeats)
            rows.append(row)
            print(f"{recipe}: {rate:.0f} img/s ({rate / cores:.0f} per core, {cpu_rate:.0f} per CPU-second)",
                  file=sys.stderr, flush=True)
    table = markdown(rows, cores, args)
    print(table)
    if args.output:
        args.output.write_text(table)


def markdown(rows: list[dict], cores: int, args: argparse.Namespace) -> str:
    from machine import cpu_description

    step = any("step" in row for row in rows)
    lines = [f"Host input pipeline, {cpu_description()[0]}, {cores} core(s) in this process's affinity; batch "
             f"{args.batch}, {args.images} generated JPEGs (~500x375), median of {args.rounds} rounds x "
             f"{args.batches} batches.", "",
             "| recipe | config | img/s | img/s per core | img per CPU-second"
             + (" | train step img/s | pipeline / step" if step else "") + " |",
             "|---|---|---:|---:|---:" + ("|---:|---:" if step else "") + "|"]
    for row in rows:
        line = (f"| {row['recipe']} | {row['config']} | {row['rate']:.0f} | {row['per_core']:.0f} | "
                f"{row['per_cpu_second']:.0f}")
        if step:
            line += f" | {row['step']:.0f} | {row['rate'] / row['step']:.2f}"
        lines.append(line + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
