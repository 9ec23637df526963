"""Train or evaluate a MobileNet: `python train.py --config configs/v3_small.py --workdir DIR`.

Data-parallel over every device of every host.  Rerunning the same command resumes from DIR's latest
checkpoint.  Multi-host: on Cloud TPU pods JAX finds its peers itself; elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every process.
"""
import os
import sys

# TensorFlow (tf.data only) prints its oneDNN notice twice at import and a line about absl's log; its oneDNN
# kernels only affect TF math ops, which the input pipeline barely uses.  Keep the start-up quiet.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard logs go here.", required=True)
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/v3_small.py.", lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Multi-host without auto-detection: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config"])


def initialize_distributed() -> None:
    """Join the other hosts before anything touches a device."""
    import jax

    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()  # a multi-host Cloud TPU slice: peers come from the TPU metadata


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    initialize_distributed()
    from flax_mobilenet.inference import enable_compilation_cache
    from flax_mobilenet.training import trainer
    from flax_mobilenet.training.input_pipeline import DatasetError

    enable_compilation_cache()  # a resumed (preempted) run loads its compiled steps instead of compiling
    for note in trainer.batch_size_notes(FLAGS.config, recipe_batch_size()):
        print(note, file=sys.stderr if note.startswith("warning") else sys.stdout, flush=True)
    try:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (trainer.ConfigError, trainer.TrainingDiverged, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def recipe_batch_size() -> int:
    """The config file's own batch_size, before command-line overrides."""
    if "batch_size" not in config_flags.get_override_values(FLAGS["config"]):
        return FLAGS.config.batch_size
    import importlib.util

    path = config_flags.get_config_filename(FLAGS["config"])
    spec = importlib.util.spec_from_file_location("_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().batch_size


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a config override naming no key of the config reported in one line."""
    from flax_mobilenet.training.defaults import base_config

    groups = {key: value for key, value in base_config().items() if hasattr(value, "keys")}
    for argument in argv[1:]:
        key = argument[len("--config."):].split("=", 1)[0] if argument.startswith("--config.") else ""
        if key in groups and "=" in argument:  # `--config.model=NAME` would fail with an AST dump
            example = "name" if "name" in groups[key] else next(iter(groups[key].keys()))
            sys.exit(f"error: config.{key} is a group of keys, not a value: set one of them, e.g. "
                     f"--config.{key}.{example}=... (its keys: {', '.join(groups[key].keys())})")
    try:
        return FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"error: {error}\nsee: python train.py --helpfull")
    except (AttributeError, KeyError) as error:  # ml_collections: `--config.no_such_key=...`
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        key = str(error).strip("\"'")
        sys.exit(f"error: the config has no key '{key}' (overrides given: {', '.join(overrides)}); the keys "
                 f"are listed in flax_mobilenet/training/defaults.py and the config file")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
