"""Export a converted or trained checkpoint as serialized StableHLO (BatchNorm folded, weights inside).

    python export.py --checkpoint checkpoints/mobilenet_v2 --output exported/mobilenet_v2
    # then, anywhere with jax:  jax.export.deserialize(open(".../model.stablehlo", "rb").read()).call(x)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import flax_mobilenet as fm
from flax_mobilenet.checkpoint import load_metadata
from flax_mobilenet.export import export_model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="folder written by convert_weights.py")
    parser.add_argument("--output", required=True, type=Path, help="folder for model.stablehlo and export.json")
    parser.add_argument("--batch-size", type=int, help="fixed batch size (default: any batch size)")
    parser.add_argument("--image-size", type=int, help="crop size (default: the one the model's weights were "
                                                        "evaluated at)")
    args = parser.parse_args(argv)
    try:
        metadata = load_metadata(args.checkpoint)
        if "model" not in metadata:
            raise ValueError(f"{args.checkpoint} has no model.json naming its model")
        variables = fm.load_variables(args.checkpoint)
        output = export_model(metadata["model"], variables, args.output, args.batch_size, args.image_size,
                              num_classes=metadata.get("num_classes", 1000), **metadata.get("overrides", {}))
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
