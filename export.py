"""Export a converted checkpoint or a training run as StableHLO, ONNX or TFLite (BatchNorm folded, weights inside).

Classifiers export logits; segmentation models per-pixel logits at the input size; detection models their
detections (boxes, scores, labels, num_valid: post-processing inside, static shapes) and raw head outputs, or
with --raw-outputs the raw outputs alone and anchors.npy (TFLite cannot convert the post-processing).

--checkpoint takes a folder written by convert_weights.py, a train.py workdir (its best step, or --step N)
or one of its checkpoints/STEP folders; a training run's image size, preprocessing and class names go into
export.json.  Each export is run in its own runtime (jax, ONNX Runtime, LiteRT) and must reproduce the model's
logits within 1e-4 relative before anything is written.

    python export.py --checkpoint checkpoints/mobilenet_v2 --output exported/mobilenet_v2
    python export.py --checkpoint runs/digits --output exported/digits_onnx --format onnx
    # StableHLO, anywhere with jax:  jax.export.deserialize(open(".../model.stablehlo", "rb").read()).call(x)
    # ONNX / TFLite need the export requirements:
    #   pip install -r requirements-export.txt && pip install --no-deps jax2onnx==0.17.1
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TensorFlow (the TFLite converter) start-up noise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import flax_mobilenet as fm
from flax_mobilenet.checkpoint import eval_transform
from flax_mobilenet.export import FORMATS, MissingConverterError, export_model
from flax_mobilenet.inference import DEFAULT_PRECISION, PRECISIONS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="folder written by convert_weights.py, a train.py workdir or one of its step folders")
    parser.add_argument("--step", type=int, help="with a train.py workdir: this step instead of the best one")
    parser.add_argument("--output", required=True, type=Path, help="folder for model.<format> and export.json")
    parser.add_argument("--batch-size", type=int, help="fixed batch size (default: any batch size; TFLite: 1)")
    parser.add_argument("--image-size", type=int, help="crop size (default: the one the checkpoint was "
                                                        "evaluated at)")
    parser.add_argument("--format", choices=FORMATS, default="stablehlo",
                        help="model.stablehlo (any batch), model.onnx (any batch) or model.tflite (batch 1 unless "
                             "--batch-size); each is checked in its runtime before it is written")
    parser.add_argument("--raw-outputs", action="store_true",
                        help="detection models: export the raw head outputs (and anchors.npy) without the "
                             "post-processing (needed for TFLite)")
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION,
                        help="StableHLO: the arithmetic written into its convs and matmuls, kept on any backend that "
                             "runs it: 'highest' (the default; float64-close on GPUs and TPUs too), 'high' or "
                             "'default' (TF32 on NVIDIA GPUs, bfloat16 on TPUs: faster, 2.5e-4 relative on an "
                             "H200). ONNX and TFLite files hold plain float32 ops (their runtime chooses): "
                             "'highest' only")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --output folder that is not empty (its model file and export.json are "
                             "replaced; other files stay)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.image_size is not None and args.image_size < 32:
        parser.error("--image-size must be at least 32")
    if args.step is not None and args.step < 0:
        parser.error("--step must be a step number kept in the run's checkpoints/ folder")
    if args.output.is_dir() and any(args.output.iterdir()) and not args.overwrite:
        print(f"error: {args.output} exists and is not empty: pass --overwrite to write the export into it, or "
              f"choose another --output", file=sys.stderr)
        return 1
    try:
        loaded = fm.open_checkpoint(args.checkpoint, args.step)
        metadata = loaded.metadata
        if "model" not in metadata:
            raise ValueError(f"{args.checkpoint} has no model.json naming its model")
        print(f"exporting {metadata['model']} from {loaded.description} as {args.format} ...", file=sys.stderr)
        output = export_model(metadata["model"], loaded.variables, args.output, args.batch_size, args.image_size,
                              format=args.format, transform=eval_transform(metadata),
                              class_names=metadata.get("class_names"), postprocess=not args.raw_outputs,
                              precision=args.precision,
                              **{k: metadata[k] for k in ("num_classes",) if k in metadata},  # else the model's
                              **metadata.get("overrides", {}))
    except (MissingConverterError, ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
