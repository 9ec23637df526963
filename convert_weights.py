"""Convert a torchvision / timm / ultralytics / yolov5 PyTorch checkpoint into a Flax (orbax) checkpoint.

    python convert_weights.py --model mobilenet_v2 --input mobilenet_v2-b0353104.pth --output ckpt/v2
    python convert_weights.py --model yolov8n --input yolov8n.safetensors --output ckpt/yolov8n
    python convert_weights.py --model yolov8n --input yolov8n.pt --trust-pickle --output ckpt/yolov8n  # a file you trust
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import time
from pathlib import Path

import flax_mobilenet as fm
from flax_mobilenet.checkpoint import VARIABLES_DIR
from flax_mobilenet.convert import ConversionError, detect_layout, guess_model, read_state_dict
from flax_mobilenet.registry import SOURCES


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings -> {key: Python literal (a plain string when it is not one)}."""
    overrides = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--override takes KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = text
    return overrides


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(fm.list_models())}")
    parser.add_argument("--input", required=True, type=Path, help=".pth/.pt/.bin (PyTorch) or .safetensors file")
    parser.add_argument("--output", required=True, type=Path, help="folder to write the orbax checkpoint to")
    parser.add_argument("--source", choices=SOURCES,
                        help="key layout of the file (default: detected from its keys)")
    parser.add_argument("--num-classes", type=int, help="classifier size (default: read from the checkpoint)")
    parser.add_argument("--width-mult", type=float, help="width multiplier the checkpoint was trained with")
    parser.add_argument("--reduced-tail", action="store_true", help="MobileNetV3 with the reduced tail")
    parser.add_argument("--dilated", action="store_true", help="MobileNetV3 with a dilated last stage")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="any other option of the model, a Python literal (repeatable), e.g. "
                             "'anchors=[[[10, 13], [16, 30], [33, 23]], ...]' for a yolov5 checkpoint whose AutoAnchor "
                             "changed its anchors")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="unpickle a .pt that holds whole modules (ultralytics/yolov5 training checkpoints): only "
                             "for files you trust, since unpickling can run code; their package must be installed")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if (args.output / VARIABLES_DIR).exists() and not args.overwrite:  # before the (slow) reading
        print(f"error: {args.output} already holds a checkpoint: pass --overwrite to replace it, or choose another "
              f"--output", file=sys.stderr)
        return 1
    try:
        fm.model_spec(args.model)
        size_mb = args.input.stat().st_size / 1e6 if args.input.is_file() else 0.0
        print(f"reading {args.input} ({size_mb:.1f} MB)...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        state_dict = read_state_dict(args.input, trust_pickle=args.trust_pickle)
        layout = detect_layout(state_dict)
        if args.source and args.source != layout:
            raise ConversionError(f"--source {args.source} given, but {args.input} has the {layout} key layout")
        overrides = {k: v for k, v in (("width_mult", args.width_mult), ("reduced_tail", args.reduced_tail or None),
                                       ("dilated", args.dilated or None)) if v is not None}
        overrides.update(parse_overrides(args.override))
        num_classes = args.num_classes
        if num_classes is None:
            guess = guess_model(state_dict)
            num_classes = guess[2] if guess else 1000
        variables = fm.convert_state_dict(args.model, state_dict, num_classes=num_classes, **overrides)
        metadata = dict(model=args.model, overrides=overrides, num_classes=num_classes, source=layout,
                        input=str(args.input.name), input_sha256=_sha256(args.input))
        fm.save_variables(args.output, variables, metadata, overwrite=args.overwrite)
    except (ConversionError, ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"converted {len(state_dict)} tensors of {args.input} ({layout} layout) into {args.model} "
          f"({num_classes} classes) in {time.perf_counter() - start:.1f}s; wrote {args.output}", file=sys.stderr)
    print(json.dumps(metadata, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
