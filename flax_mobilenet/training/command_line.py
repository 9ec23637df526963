"""The command line of the scripts that take a run's config (train.py, prepare.py): absl's parsing, with a missing
config file, an override naming no key, or a group set as a value reported in one line with the fix."""
from __future__ import annotations

import difflib
import os
import re
import sys

from absl import flags

from .defaults import base_config

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
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


def parse_flags(parser: flags.FlagValues, argv: list[str]) -> list[str]:
    """absl's parsing of `argv` into `parser` (its `--config` a config file flag), with a missing config file or a
    config override naming no key reported in one line."""
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
        return parser(argv)
    except flags.Error as error:
        sys.exit(f"error: {error}\nsee: python {os.path.basename(argv[0])} --helpfull")
    except (AttributeError, KeyError) as error:  # ml_collections: `--config.no_such_key=...`
        sys.exit(unknown_key_message(error, argv))
    except OSError as error:  # the config file could not be loaded (ml_collections defers the error)
        sys.exit(f"error: {str(error).splitlines()[-1].strip()}")
