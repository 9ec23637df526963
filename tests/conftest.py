import importlib.util
import os
import re
import sys
from functools import cache
from pathlib import Path

import jax
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# The tests compile hundreds of small programs and run each a few times: LLVM's optimizations cost them more
# compile time than they save (test_inference.py + test_mobilenet_v4.py: 332 s -> 230 s).  XLA's HLO passes,
# hence fusion and numerics, are unchanged.  This process only: the train.py runs the tests start (quickstarts,
# resume, multi-device) keep the full optimization.
jax.config.update("jax_disable_most_optimizations", True)

# The `torch` marker (pyproject.toml): tests that need PyTorch/torchvision/timm.  Every test of a module that
# imports torch, torchvision, timm or a helper that imports them (torch_reference, yolo_reference, seed_modules)
# at its top level gets it; a module that imports them only inside some tests marks those tests itself
# (test_training_steps.py).  The Python 3.13 leg of CI (no PyTorch wheel there) runs
# `-m "not torch and not export and not slow"`; the 3.11 leg runs everything, and a missing torch fails it loudly.
TORCH_INSTALLED = importlib.util.find_spec("torch") is not None
_TOP_LEVEL_TORCH_IMPORT = re.compile(
    r"^(?:from|import)\s+(?:torch|torchvision|timm|torch_reference|yolo_reference|seed_modules)\b", re.M)


@cache
def imports_torch_at_top_level(path: Path) -> bool:
    return bool(_TOP_LEVEL_TORCH_IMPORT.search(path.read_text(encoding="utf-8")))


def _mark_expression_excludes_torch(config) -> bool:
    """True when `-m` deselects every test marked torch, whatever other marks it has (checked with all of them
    present and with none); e.g. "not torch", "not torch and not slow"."""
    expression = config.getoption("markexpr", "")
    if not expression:
        return False
    try:
        from _pytest.mark.expression import Expression
        compiled = Expression.compile(expression)
        return not any(compiled.evaluate(lambda name, /, **kwargs: name == "torch" or others)
                       for others in (True, False))
    except Exception:  # an unknown pytest internals change: collect (and fail loudly) rather than drop tests
        return False


def pytest_ignore_collect(collection_path, config):
    # Without PyTorch such a module cannot even be imported; when `-m` deselects all of its tests anyway, it is not
    # collected.  Otherwise it is collected, and its import error fails the run.
    if (not TORCH_INSTALLED and collection_path.suffix == ".py" and collection_path.name.startswith("test_")
            and imports_torch_at_top_level(collection_path) and _mark_expression_excludes_torch(config)):
        return True
    return None


# Test files that take many minutes run first (the test command passes `--no-loadscope-reorder`, so xdist hands
# out whole files in this order): started last, one of them would leave the other worker idle for its length.
LONG_FILES_FIRST = ("test_train.py", "test_quickstart_yolo.py", "test_quickstart_detection.py",
                    "test_quickstart_segmentation.py", "test_dense_training.py", "test_fail_well.py", "test_layers.py",
                    "test_yolo.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(item.path)
        if path.suffix == ".py" and imports_torch_at_top_level(path):
            item.add_marker(pytest.mark.torch)
    rank = {name: position for position, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.path).name, len(rank)))  # stable: the rest keep their order


# Parity errors measured by the tests, printed at the end of the run.
PARITY_REPORT: dict[str, float] = {}


_PARITY_DIR = "FLAX_MOBILENET_PARITY_DIR"  # where pytest-xdist workers leave their reports for the controller


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist); workers inherit the variable
        import tempfile
        os.environ[_PARITY_DIR] = tempfile.mkdtemp(prefix="parity-")


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput") and PARITY_REPORT and os.environ.get(_PARITY_DIR):
        import json
        worker = session.config.workerinput["workerid"]
        Path(os.environ[_PARITY_DIR], f"{worker}.json").write_text(json.dumps(PARITY_REPORT))


def pytest_terminal_summary(terminalreporter):
    import json
    import shutil
    if hasattr(terminalreporter.config, "workerinput"):
        return  # the controller reports every worker's numbers
    folder = os.environ.get(_PARITY_DIR)
    if folder and Path(folder).is_dir():
        for report in Path(folder).glob("*.json"):
            PARITY_REPORT.update(json.loads(report.read_text()))
        shutil.rmtree(folder, ignore_errors=True)
    if PARITY_REPORT:
        terminalreporter.section("parity with PyTorch: max |logit diff| / max |logit|")
        for case, error in sorted(PARITY_REPORT.items()):
            terminalreporter.write_line(f"{case:60s} {error:.2e}")


@pytest.fixture(scope="session")
def parity_report():
    return PARITY_REPORT
