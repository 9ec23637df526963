"""Write a run's dataset once into pre-resized ArrayRecord shards, for runs that repeat many epochs:

    python prepare.py --config configs/v3_large.py --config.dataset=folder:/data/imagenet --out /data/imagenet-256
    python train.py --config configs/v3_large.py --config.dataset=prepared:/data/imagenet-256 --workdir runs/v3

The config is the run's (its model's task, image size and dataset options pick what is written); a prepared dataset
trains that task.  Training images are reduced to --side (classification and segmentation: the shorter side,
detection: the longer; default per task in flax_mobilenet/training/prepare.py) and stored as JPEG; smaller ones and
the eval split keep their original bytes.  The same seed draws the same order and augmentations as on the original.
"""
import os
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's config file, e.g. configs/v3_large.py, with its "
                                "--config.dataset and any other --config.KEY=VALUE overrides.", lock_config=True)
flags.DEFINE_string("out", None, "The folder to write (created; it must not hold a prepared dataset yet).",
                    required=True)
flags.DEFINE_integer("side", 0, "The bound on the training images' side in pixels; 0: the task's default (a 224 "
                     "classifier: shorter side 256).")
flags.DEFINE_integer("quality", 90, "JPEG quality of the reduced training images (1-100).")
flags.mark_flags_as_required(["config"])


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    from pathlib import Path

    from flax_mobilenet.training import prepare
    from flax_mobilenet.training.experiment import ConfigError, Experiment
    from flax_mobilenet.training.sources import DatasetError

    out = Path(FLAGS.out).expanduser()
    try:
        experiment = Experiment(FLAGS.config)
        side = FLAGS.side or prepare.default_side(experiment.task_name, FLAGS.config, experiment.eval_transform)
        metadata = prepare.prepare(experiment.source, experiment.task_name, out, side, FLAGS.quality)
    except (ConfigError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(prepare.describe(metadata, out))
    print(f"train on it with: python train.py --config {config_flags.get_config_filename(FLAGS['config'])} "
          f"--config.dataset=prepared:{out} --workdir DIR (and the same --config overrides)")
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    from flax_mobilenet.training.command_line import parse_flags as parse

    return parse(FLAGS, argv)


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
