"""Classify, segment or detect with a converted checkpoint or a training run: labels, masks or boxes per image.

Classifiers give the top-5 labels and probabilities of each image.  Segmentation models give the class of
every pixel and detection models boxes: --output-dir writes each image with its colour mask or labelled boxes
drawn on it, --json prints class fractions or COCO-style boxes.  `--list-models` lists the model names with
their task and reference weights.

--checkpoint takes a folder written by convert_weights.py, a train.py workdir (its best step, or --step N)
or one of its checkpoints/STEP folders.  Images get the eval transform the checkpoint was evaluated with: a
training run's own (its image size, mean/std) and class names, else the reference weights' of the model
(`flax_mobilenet.weights_info`: e.g. resize 256 / crop 224 bilinear for torchvision MobileNetV2, bicubic and
[0, 1] inputs at 256 for timm MobileViT) and ImageNet's labels.

    python predict.py --checkpoint checkpoints/mobilenet_v2 examples/cat.jpg [--json]
    python predict.py --checkpoint runs/digits [--step 400] digit.png
    python predict.py --checkpoint checkpoints/ssdlite photo.jpg --output-dir pictures [--json] [--min-score 0.5]
    python predict.py --list-models
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import flax_mobilenet as fm
from flax_mobilenet.checkpoint import (CHECKPOINTS_DIR, class_names, eval_transform, load_metadata,
                                       require_checkpoint_folder)
from flax_mobilenet.inference import DEFAULT_PRECISION, PRECISIONS, compile_inference, enable_compilation_cache
from flax_mobilenet.preprocessing import classify, detection_input, load_image, preprocess_for


def model_table() -> str:
    """Every registered model name with its task and the reference weights it reproduces (or none)."""
    rows = [("name", "task", "reference weights (convert_weights.py converts them)")]
    for name in fm.list_models():
        reference = fm.weights_info(name).reference
        published = reference and "no published weights" not in reference
        rows.append((name, fm.model_spec(name).task,
                     reference if published else "none published (train it with train.py)"))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}" for row in rows)


class ListModels(argparse.Action):
    """--list-models: print the model table and exit (before the required arguments are checked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(model_table())
        parser.exit()


PRECISION_HELP = ("arithmetic of the convs and matmuls on GPUs and TPUs (CPUs compute full float32 at every level): "
                  "'highest' (the default) keeps the logits float64-close (2.5e-7 relative, MobileNetV3-Large on "
                  "an H200), 'default' is the backend's fastest (TF32 on NVIDIA GPUs, bfloat16 on TPUs; 2.5e-4 "
                  "there), 'high' is between (TF32 / 3 bfloat16 passes)")


def parse_args(argv=None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-models", action=ListModels,
                        help="list the model names with their task and reference weights, and exit")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything Pillow reads)")
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="folder written by convert_weights.py, a train.py workdir or one of its step folders")
    parser.add_argument("--step", type=int, help="with a train.py workdir: this step instead of the best one")
    parser.add_argument("--model", help="model name (default: the one the checkpoint's model.json names); "
                                        f"one of: {', '.join(fm.list_models())}")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (detection: COCO-style boxes)")
    parser.add_argument("--output-dir", type=Path, help="segmentation/detection: write each image with its class "
                                                        "mask or boxes drawn on it here (IMAGE_STEM.png)")
    parser.add_argument("--min-score", type=float, default=0.3, help="detection: boxes shown from this score "
                                                                      "(default 0.3)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per compiled call (default 16)")
    parser.add_argument("--top", type=int, default=5, help="labels to show per image (default 5)")
    parser.add_argument("--image-size", type=int, help="crop size (default: the one the model's weights were "
                                                        "evaluated at; the resize keeps their ratio)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help=PRECISION_HELP)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.top < 1 or (args.image_size is not None and args.image_size < 32):
        parser.error("--batch-size and --top must be at least 1, --image-size at least 32")
    if args.step is not None and args.step < 0:
        parser.error("--step must be a step number kept in the run's checkpoints/ folder")
    return parser, args


def resolve_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, int, dict]:
    """(name, num_classes, overrides) from the checkpoint's model.json; --model must agree with it."""
    try:
        if args.model:
            fm.model_spec(args.model)  # an unknown name fails first, with the known names
        require_checkpoint_folder(args.checkpoint)
        metadata = load_metadata(args.checkpoint)
        stored = metadata.get("model")
        if args.model and stored and args.model != stored:
            raise ValueError(f"--model {args.model} given, but {args.checkpoint} holds a {stored} checkpoint")
        name = args.model or stored
        if name is None:
            raise ValueError(f"{args.checkpoint} has no model.json naming its model: pass --model")
        overrides = metadata.get("overrides", {})
        fm.model_spec(name, **overrides)  # options the model does not take fail here
        return name, metadata.get("num_classes", fm.create_model(name, **overrides).num_classes), overrides
    except (ValueError, TypeError, FileNotFoundError) as error:
        parser.error(str(error))


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    name, num_classes, overrides = resolve_model(parser, args)
    try:
        loaded = fm.open_checkpoint(args.checkpoint, args.step)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint.expanduser()
    if (checkpoint / CHECKPOINTS_DIR).is_dir() or checkpoint.parent.name == CHECKPOINTS_DIR:  # a training run
        print(f"loaded {loaded.description}", file=sys.stderr, flush=True)  # which step: the best one, or --step
    variables, metadata = loaded.variables, {"model": name, **loaded.metadata}
    enable_compilation_cache()
    import flax

    transform = eval_transform(metadata).at_size(args.image_size)
    multiple = fm.create_model(name, **overrides).input_multiple
    if transform.crop_size % multiple:
        parser.error(f"--image-size {transform.crop_size}: {name} takes sizes that are multiples of {multiple} "
                     f"(e.g. {-(-transform.crop_size // multiple) * multiple})")
    task = fm.model_spec(name, **overrides).task
    if task != "classification":
        return predict_dense(args, task, name, variables, metadata, transform, num_classes, overrides)

    try:  # compiled once, ahead of time, BatchNorm folded; a checkpoint that does not fit fails here
        apply = compile_inference(name, variables, args.batch_size, transform.crop_size,
                                  precision=args.precision, num_classes=num_classes, **overrides)
    except (flax.errors.FlaxError, KeyError, ValueError) as error:
        print(f"error: {args.checkpoint} does not fit {name}: {error}".splitlines()[0], file=sys.stderr)
        return 2
    labels = class_names(metadata)
    top_k = min(args.top, num_classes)
    key = f"top{top_k}"
    failed, results = False, []
    for start in range(0, len(args.images), args.batch_size):
        paths, arrays = [], []
        for path in args.images[start:start + args.batch_size]:
            try:
                arrays.append(preprocess_for(load_image(path), transform))
                paths.append(path)
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                failed = True
        if not arrays:
            continue
        if len(args.images) > args.batch_size and sys.stderr.isatty():  # progress for long interactive runs
            done = min(start + args.batch_size, len(args.images))
            print(f"\r{done}/{len(args.images)} images", end="\n" if done == len(args.images) else "",
                  file=sys.stderr, flush=True)
        for path, top in zip(paths, classify(apply, np.stack(arrays), args.batch_size, top_k)):
            entry = {"image": path, key: [{"index": i, "label": labels[i] if labels else str(i), "prob": p}
                                          for i, p in top]}
            if args.json:
                results.append(entry)
            else:
                print(path + "".join(f"\n  {x['label']} ({x['index']}): {x['prob']:.4f}" for x in entry[key]),
                      flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def predict_dense(args: argparse.Namespace, task: str, name: str, variables: dict, metadata: dict,
                  transform, num_classes: int, overrides: dict) -> int:
    """Segmentation: the class of every pixel (a colour mask over the image, class fractions in --json).
    Detection: boxes in the image's pixels with labels and scores (drawn, printed, COCO-style in --json)."""
    import jax

    from flax_mobilenet.drawing import draw_boxes, overlay_mask

    labels = class_names(metadata)
    compiled: dict[tuple, object] = {}  # one compilation per input shape (segmentation keeps each aspect ratio)

    def run(batch: np.ndarray):
        """Per-pixel logits (DeepLabV3: the main head's), or detections (the post-processing jitted too)."""
        if batch.shape not in compiled:
            apply = compile_inference(name, variables, len(batch), batch.shape[1:3], precision=args.precision,
                                      num_classes=num_classes, **overrides)
            if task == "detection":
                postprocess = jax.jit(fm.create_model(name, num_classes=num_classes, **overrides)
                                      .postprocessor(batch.shape[1:3]))
                compiled[batch.shape] = lambda x: postprocess(apply(x))
            else:
                compiled[batch.shape] = lambda x: (lambda out: out["out"] if isinstance(out, dict) else out)(apply(x))
        return compiled[batch.shape](batch)

    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    failed, results = False, []
    for path in args.images:
        try:
            image = load_image(path)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
            continue
        if task == "detection":  # letterboxed to the smallest stride-32 rectangle (ultralytics) or resized
            x, to_image = detection_input(image, transform, rect=True)
            x = x[None]
        else:
            x = preprocess_for(image, transform)[None]
        picture_path = args.output_dir / f"{Path(path).stem}.png" if args.output_dir else None
        if task == "segmentation":
            classes = np.asarray(run(x))[0].argmax(-1)
            present, counts = np.unique(classes, return_counts=True)
            entry = {"image": path, "classes": [
                {"index": int(i), "label": labels[i] if labels else str(i), "fraction": round(c / classes.size, 4)}
                for i, c in sorted(zip(present, counts), key=lambda p: -p[1])]}
            picture = overlay_mask(image, classes, num_classes) if picture_path else None
            lines = [f"  {c['label']} ({c['index']}): {100 * c['fraction']:.1f}% of the pixels" for c in entry["classes"]]
        else:
            found = jax_to_numpy(run(x))
            keep = np.flatnonzero(found["scores"][0, :int(found["num_valid"][0])] >= args.min_score)
            boxes = to_image(found["boxes"][0, keep])
            entry = {"image": path, "detections": [
                {"category_id": int(found["labels"][0, i]), "score": round(float(found["scores"][0, i]), 4),
                 "label": labels[int(found["labels"][0, i])] if labels else str(int(found["labels"][0, i])),
                 "bbox": [round(float(v), 1) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])]}  # COCO: x, y, w, h
                for i, b in zip(keep, boxes)]}
            picture = (draw_boxes(image, boxes, found["labels"][0, keep], found["scores"][0, keep], labels,
                                  num_classes) if picture_path else None)
            lines = [f"  {d['label']} ({d['category_id']}): {d['score']:.3f} at x={d['bbox'][0]} y={d['bbox'][1]} "
                     f"w={d['bbox'][2]} h={d['bbox'][3]}" for d in entry["detections"]] \
                or [f"  no detection scored {args.min_score:g} or more (--min-score)"]
        if picture is not None:
            picture.save(picture_path)
            entry["output"] = str(picture_path)
        if args.json:
            results.append(entry)
        else:
            print(path + (f" -> {picture_path}" if picture_path else "") + "".join(f"\n{line}" for line in lines),
                  flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def jax_to_numpy(detections) -> dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in detections._asdict().items()}


if __name__ == "__main__":
    sys.exit(main())
