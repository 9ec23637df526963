"""Runs that fail well: each fault a long run meets on a real machine ends the process soon, with one line that names
the cause and the fix, and without losing (or hiding) the checkpoints written before.

Every scenario runs the real `train.py` in a subprocess on the digits dataset with a tiny model (MobileNetV1 x0.25
at 32x32), so that a compile takes seconds; faults are injected by a wrapper that patches one stage and then runs
train.py as `__main__`.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # train.py runs: orchestration, as the 3.11 CI leg's long runs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/v3_small_digits.py", "--config.model.name=mobilenet_v1", "--config.model.width_mult=0.25",
        "--config.progress_bar=False", "--config.log_every_steps=25", "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=25"]
EXIT_BOUND_SECONDS = 20  # from the injected failure to the end of the process (the no-hang guarantee)

# Patches one stage of train.py, then runs it. A non-daemon thread that never ends stands for a library thread stuck
# at exit (tf.data, orbax, tqdm): the process must end anyway.
INJECT = r'''
import runpy, sys, threading, time
stage = sys.argv.pop(1)
from flax_mobilenet.training import checkpoints, trainer

def fail(*args, **kwargs):
    threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
    print(f"injected at {time.time()}", file=sys.stderr, flush=True)
    if stage == "out_of_memory":  # what XLA raises when an allocation fails at run time
        import jax
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 30440628288 bytes.")
    raise RuntimeError(f"injected failure at {stage}")

if stage == "compile":
    trainer.Trainer._compile_train_step = fail
elif stage in ("step", "out_of_memory"):
    compile_step = trainer.Trainer._compile_train_step
    trainer.Trainer._compile_train_step = lambda self, state: (compile_step(self, state), fail)[1]
elif stage == "eval":
    trainer.Trainer.evaluate = fail
elif stage == "checkpoint":
    checkpoints.TrainingCheckpoints._check_space = lambda self, step, state: fail() if step >= 50 else None
elif stage == "no_space_check":  # the write itself fails (orbax/tensorstore), not our check before it
    checkpoints.TrainingCheckpoints._check_space = lambda self, step, state: None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def _train(args: list[str], stage: str = "", timeout: float = 300, prefix: tuple[str, ...] = ()
           ) -> tuple[subprocess.CompletedProcess, float]:
    """Run train.py (through the injecting wrapper when `stage` is set); (result, seconds from the injected failure
    to the exit, or 0)."""
    command = [sys.executable, *(("-c", INJECT, stage) if stage else ()), "train.py", *args]
    result = subprocess.run([*prefix, *command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    ended = time.time()
    marks = [line for line in result.stderr.splitlines() if line.startswith("injected at ")]
    return result, (ended - float(marks[-1].split()[-1]) if marks else 0.0)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("stage", ["compile", "step", "eval", "checkpoint"])
def test_a_failure_at_any_stage_ends_the_process_within_seconds(tmp_path, stage):
    steps = ["--config.num_train_steps=60", "--config.eval_every_steps=30"] if stage == "eval" else \
        ["--config.num_train_steps=60"]
    result, exit_seconds = _train([*TINY, *steps, "--workdir", str(tmp_path / "run")], stage=stage)
    assert result.returncode == 1, result.stderr[-3000:]
    assert 0 < exit_seconds < EXIT_BOUND_SECONDS, (exit_seconds, result.stderr[-3000:])
    (summary,) = _error_lines(result)
    assert summary.startswith(f"error: unexpected RuntimeError: injected failure at {stage}"), summary
    assert "run the same command to resume" in summary
    assert "Traceback" in result.stderr.split(summary, 1)[1]  # unexpected: the traceback follows the summary


def test_out_of_memory_at_run_time_is_one_line(tmp_path):
    result, exit_seconds = _train([*TINY, "--config.num_train_steps=60", "--workdir", str(tmp_path / "run")],
                                  stage="out_of_memory")
    assert result.returncode == 1 and 0 < exit_seconds < EXIT_BOUND_SECONDS, result.stderr[-3000:]
    assert _error_lines(result) == ["error: out of memory: RESOURCE_EXHAUSTED: Out of memory allocating 30440628288 "
                                    "bytes.; lower --config.batch_size (or --config.image_size); the checkpoints "
                                    "written before stay"]
    assert "Traceback" not in result.stderr


def test_memory_preflight_names_the_batch_that_fits(tmp_path):
    """The issue's case at a size no test machine has the memory for: one line, the need, the free memory and the
    largest batch that fits, computed from two compiles; nothing written to the workdir."""
    result, _ = _train([*TINY, "--config.image_size=896", "--config.batch_size=1024",
                        "--workdir", str(tmp_path / "run")])
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = _error_lines(result)
    assert "Traceback" not in result.stderr
    assert line.startswith("error: the train step needs ") and " GiB per device at global batch 1024 (896x896" in line
    assert "host memory has " in line and "GiB free" in line
    fits = int(line.split("the largest global batch that fits is ")[1].split()[0])
    assert 0 < fits < 1024 and f"--config.batch_size={fits}" in line
    assert not (tmp_path / "run").exists()  # a run stopped before its first step leaves no folder behind


def _mounted_tmpfs_available() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-Urm", "true"], capture_output=True).returncode == 0


def _in_small_filesystem(tmp_path: Path, megabytes: int, script: str) -> subprocess.CompletedProcess:
    """Run a bash `script` with $SMALL a `megabytes` filesystem: a tmpfs mounted in a private mount namespace."""
    small = tmp_path / "small"
    small.mkdir()
    return subprocess.run(["unshare", "-Urm", "bash", "-c",
                           f"mount -t tmpfs -o size={megabytes}m tmpfs {small} && SMALL={small} && {script}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)


@pytest.mark.skipif(not _mounted_tmpfs_available(), reason="needs unshare -Urm (user and mount namespaces)")
@pytest.mark.parametrize("stage", ["", "no_space_check"])
def test_full_disk_keeps_the_last_good_checkpoint_and_resumes_after_space_is_freed(tmp_path, stage):
    """A 16 MB filesystem with 8.5 MB taken: a checkpoint takes 2.8 to 3.8 MB (orbax's data files vary with the
    write's timing), so step 25 fits and 50 or 75 does not. One line naming the step, the folder, the cause and the
    last good step; no partial folder left; after the filler is removed the same command resumes from the last
    good step. Without our check before the write ('no_space_check'), orbax's own failure reads the same."""
    inject = f"-c '{INJECT}' {stage}" if stage else ""
    command = f"{sys.executable} {inject} train.py {' '.join(TINY)} --config.num_train_steps=100 " \
              f"--workdir $SMALL/run"
    script = (f"head -c 8500000 /dev/zero > $SMALL/filler; {command} > $SMALL/../first.out 2> $SMALL/../first.err; "
              f"echo $? > $SMALL/../first.rc; ls $SMALL/run/checkpoints > $SMALL/../kept; rm $SMALL/filler; "
              f"{command} > $SMALL/../second.out 2> $SMALL/../second.err; echo $? > $SMALL/../second.rc")
    done = _in_small_filesystem(tmp_path, 16, script)
    assert done.returncode == 0, done.stderr[-3000:]
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first_err[-3000:]
    (line,) = [x for x in first_err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: cannot write the checkpoint of step "), line
    failed = int(line.removeprefix("error: cannot write the checkpoint of step ").split()[0])
    assert failed in (50, 75) and "No space left on device" in line, line
    assert f"the last good checkpoint is step {failed - 25}" in line and "run the same command to resume" in line
    assert "Traceback" not in first_err and "Event loop is closed" not in first_err, first_err[-3000:]
    kept = [str(step) for step in range(25, failed, 25)]
    assert (tmp_path / "kept").read_text().split() == kept  # no {failed}.orbax-checkpoint-tmp left
    second_out = (tmp_path / "second.out").read_text()
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-3000:]
    assert "resuming from" in second_out and f"checkpoints/{failed - 25}" in second_out and "done:" in second_out


@pytest.fixture(scope="module")
def damaged_run(tmp_path_factory) -> Path:
    """A run of 60 steps (checkpoints 25, 50, 60) whose newest step's data files are truncated to half."""
    workdir = tmp_path_factory.mktemp("damaged") / "run"
    result, _ = _train([*TINY, "--config.num_train_steps=60", "--workdir", str(workdir)])
    assert result.returncode == 0, result.stderr[-3000:]
    data = [f for f in (workdir / "checkpoints" / "60" / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data
    for file in data:
        file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
    return workdir


def test_predict_and_export_name_the_damaged_step_and_the_good_ones(damaged_run):
    from flax_mobilenet.checkpoint import open_checkpoint

    for step in (None, 60):  # its best step (the only evaluated one) and the step asked for
        with pytest.raises(ValueError, match=r"step 60 of the training run .* is damaged \(.+\); the good steps are "
                                             r"50, 25: pass one with --step"):
            open_checkpoint(damaged_run, step)
    assert open_checkpoint(damaged_run, 50).description.endswith("step 50 (as asked)")
    result = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(damaged_run), "digit.png"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "step 60 of the training run" in result.stderr and "the good steps are 50, 25" in result.stderr


def test_resume_falls_back_to_the_newest_step_that_restores(damaged_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(damaged_run, workdir)
    result, _ = _train([*TINY, "--config.num_train_steps=75", "--workdir", str(workdir)])
    assert result.returncode == 0, result.stderr[-3000:]
    warning = next(line for line in result.stdout.splitlines() if line.startswith("warning: step 60"))
    assert "cannot be restored" in warning and f"moved it to {workdir / 'damaged_checkpoints' / '60'}" in warning
    assert warning.endswith("falling back to step 50"), warning
    assert (workdir / "damaged_checkpoints" / "60" / "state").is_dir()  # moved aside, not deleted
    assert "resuming from" in result.stdout and "done: mobilenet_v1 on digits, step 75" in result.stdout
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [25, 50, 75]
