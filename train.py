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


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
KEYS_HINT = "keys: flax_mobilenet/training/defaults.py and the config file"


def config_file_argument(argv: list[str]) -> str | None:
    """The path --config names (without ml_collections' `:ARGUMENT` suffix), if given."""
    for index, argument in enumerate(argv[1:], 1):
        if argument.startswith("--config="):
            return argument.split("=", 1)[1].split(":", 1)[0]
        if argument == "--config" and index + 1 < len(argv):
            return argv[index + 1].split(":", 1)[0]
    return None


def missing_config_message(path: str) -> str:
    """One line for a --config file that does not exist, with the files of configs/."""
    names = sorted(name for name in os.listdir(CONFIGS_DIR) if name.endswith(".py")) if os.path.isdir(CONFIGS_DIR) \
        else []
    return f"error: no config file {path} (configs/ holds: {', '.join(names) or 'nothing'})"


def unknown_key_message(error: BaseException, argv: list[str]) -> str:
    """One line for ml_collections' KeyError (or the AttributeError wrapping it) on `--config.no_such_key=...`:
    the key, the group it was looked up in, and the closest key there (its whole path)."""
    import difflib
    import re

    from flax_mobilenet.training.defaults import base_config

    while isinstance(error, AttributeError) and error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]  # ml_collections wraps the KeyError in an AttributeError
    text = str(error.args[0]) if error.args else str(error)
    missing = text.splitlines()[0].strip().strip("\"'") if text.strip() else ""
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    for override in overrides:  # the override whose path holds the missing segment: report its whole path
        parts = override.split(".")
        if missing in parts:
            index = parts.index(missing)
            break
    else:
        parts, index = [missing], 0
    where = f" in config.{'.'.join(parts[:index])}" if index else ""
    if suggestion:
        close = suggestion.group(1)
    else:  # no suggestion in the message: the closest key of the defaults at that level
        level = base_config()
        for part in parts[:index]:
            level = level.get(part) if hasattr(level, "get") else None
        options = [str(k) for k in level.keys()] if hasattr(level, "keys") else []
        matches = difflib.get_close_matches(missing, options, n=1, cutoff=0.6)
        close = matches[0] if matches else None
    hint = f"; did you mean '{'.'.join([*parts[:index], close])}'?" if close else ""
    return f"error: the config has no key '{missing}'{where}{hint} ({KEYS_HINT})"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a missing config file or a config override naming no key reported in one line."""
    from flax_mobilenet.training.defaults import base_config

    path = config_file_argument(argv)
    if path is not None and not os.path.isfile(path):
        sys.exit(missing_config_message(path))
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
        sys.exit(unknown_key_message(error, argv))
    except OSError as error:  # the config file could not be loaded (ml_collections defers the error)
        sys.exit(f"error: {str(error).splitlines()[-1].strip()}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
