"""Train or evaluate a MobileNet: `python train.py --config configs/v3_small.py --workdir DIR`.

Data-parallel over every device of every host.  Rerunning the same command resumes from DIR's latest
checkpoint.  Multi-host: on Cloud TPU pods JAX finds its peers itself; elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` to every process.

Any config key can be overridden on the command line with --config.KEY=VALUE, nested keys with dots:

    python train.py --config configs/v3_small_digits.py --workdir runs/digits \\
        --config.batch_size=64 --config.num_epochs=5 --config.model.name=mobilenet_v2

The keys, with their defaults and meaning, are in flax_mobilenet/training/defaults.py; the config file
(configs/*.py) sets a recipe on top of them.  The model names (config.model.name), with their task and
whether reference weights exist: python predict.py --list-models
"""
import os
import sys
import threading
import traceback

# TensorFlow (tf.data only) prints its oneDNN notice twice at import and a line about absl's log; its oneDNN
# kernels only affect TF math ops, which the input pipeline barely uses.  Keep the start-up quiet.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and TensorBoard logs go here.", required=True)
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/v3_small.py; override any of its keys "
                                "with --config.KEY=VALUE (keys: flax_mobilenet/training/defaults.py).",
                                lock_config=True)
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


EXIT_GRACE_SECONDS = 10  # after an error, how long the interpreter's shutdown may take before the process ends


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    initialize_distributed()
    exit_bounded(run())


def run() -> int:
    """Train as configured; the exit code. A cause the user can fix is one line; anything else is a one-line summary,
    then its traceback."""
    from flax_mobilenet.inference import enable_compilation_cache
    from flax_mobilenet.training import trainer
    from flax_mobilenet.training.checkpoints import CheckpointWriteError
    from flax_mobilenet.training.input_pipeline import DatasetError

    enable_compilation_cache()  # a resumed (preempted) run loads its compiled steps instead of compiling
    for note in trainer.batch_size_notes(FLAGS.config, recipe_batch_size()):
        print(note, file=sys.stderr if note.startswith("warning") else sys.stdout, flush=True)
    try:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (trainer.ConfigError, trainer.TrainingDiverged, DatasetError, CheckpointWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step: nothing new was saved
        print("\ninterrupted (Ctrl-C): the checkpoints written before stay; run the same command to resume",
              file=sys.stderr)
        return 130
    except SystemExit as stop:  # trainer.Stopped: saved at a SIGTERM / Ctrl-C
        return stop.code if isinstance(stop.code, int) else 1
    except Exception as error:  # noqa: BLE001 - every failure ends the process, with its cause first
        first = (str(error).strip().splitlines() or [""])[0][:500]
        if "RESOURCE_EXHAUSTED" in first or "Out of memory" in first:
            print(f"error: out of memory: {first}; lower --config.batch_size (or --config.image_size); the "
                  f"checkpoints written before stay", file=sys.stderr)
            return 1
        print(f"error: unexpected {type(error).__name__}: {first} (the traceback follows; the checkpoints written "
              f"before stay, run the same command to resume)", file=sys.stderr)
        traceback.print_exc()
        return 1
    return 0


def exit_bounded(code: int) -> None:
    """Exit with `code`; if the interpreter's shutdown hangs (a library's non-daemon thread, a device call that
    never returns), end the process anyway after EXIT_GRACE_SECONDS."""
    sys.stdout.flush()
    sys.stderr.flush()
    watchdog = threading.Timer(EXIT_GRACE_SECONDS, os._exit, args=(code,))
    watchdog.daemon = True
    watchdog.start()
    sys.exit(code)


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
    from flax_mobilenet.training.command_line import parse_flags as parse

    return parse(FLAGS, argv)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
