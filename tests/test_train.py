"""train.py end to end: every config, data parallelism (8 devices, 2 processes), resume, bad configs."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")
# One config per distinct recipe (v1 and v3_large share v2's and v3_small's; MobileNetV4's AdamW recipe has
# the same shape as MobileViT's): SGD/step, RMSprop/step + AutoAugment + bf16, SGD/cosine + warm-up + EMA +
# RandAugment + label smoothing, AdamW/cosine with the [0, 1] inputs of MobileViT's weights.
IMAGENET_CONFIGS = ["v2", "v3_small", "shufflenet_v2", "mobilevit_s"]

# A small, fast digits run: the same for every run compared below.
SMALL_RUN = ["--config.batch_size=32", "--config.num_train_steps=12", "--config.log_every_steps=1",
             "--config.eval_every_steps=6", "--config.checkpoint_every_steps=3", "--config.progress_bar=False",
             "--config.model.width_mult=0.5"]


@pytest.fixture(scope="module", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """train.py caches compilations: runs of the same program (a resumed run, above all) load instead of compile."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLAX_MOBILENET_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
        yield


def run_train(workdir, *flags, devices=1, config="configs/v3_small_digits.py", check=True, env_extra=None,
              **popen):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    command = [sys.executable, TRAIN, f"--config={ROOT / config}", f"--workdir={workdir}", *flags]
    if popen:
        return subprocess.Popen(command, env=env, cwd=ROOT, **popen)
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET_CONFIGS)
def test_config_trains_and_evaluates_one_step_on_mock_imagenet(name, tmp_path):
    """The published recipes (RMSprop/SGD, AutoAugment, random erasing, bf16) run a train and an eval step."""
    import tensorflow_datasets as tfds

    from flax_mobilenet.training import trainer
    from flax_mobilenet.training.defaults import base_config

    config = _load_config(name)
    assert set(base_config().keys()) <= set(config.keys())
    config.unlock()
    config.update(image_size=32, batch_size=2, eval_batch_size=4, num_train_steps=1, progress_bar=False,
                  async_checkpointing=False)
    if name != "v3_small":  # bf16 doubles XLA:CPU's compile time; one config covers it
        config.half_precision = False
    with tfds.testing.mock_data(num_examples=6):
        results = trainer.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 1 and results["eval_examples"] == 6
    assert 0.0 <= results["eval_top1"] <= results["eval_top5"] <= 1.0
    assert (tmp_path / "checkpoints" / "1").is_dir()
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["step"] == 1


def _load_config(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The README's main-job command, as is: V3-Small on `digits` on this CPU."""
    workdir = tmp_path_factory.mktemp("digits")
    return workdir, run_train(workdir, config="configs/v3_small_digits.py")


def test_quickstart_reaches_95_percent_on_digits(digits_run):
    workdir, result = digits_run
    final = read_jsonl(workdir / "metrics.jsonl")[-1]
    assert final["eval_examples"] == 360 and final["eval_top1"] >= 0.95, final
    best = max(read_jsonl(workdir / "metrics.jsonl"), key=lambda m: (m["eval_top1"], m["step"]))  # ties: latest
    assert f"checkpoints: {workdir / 'checkpoints'} (best: step {best['step']}, eval_top1 " in result.stdout
    assert f"tensorboard --logdir {workdir / 'tensorboard'}" in result.stdout
    assert list((workdir / "tensorboard").iterdir()), "no TensorBoard event file"
    assert "compiling the train step (mobilenet_v3_small, global batch 64, 32x32) ...\ncompiled in" in result.stdout
    assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr, result.stderr[:2000]


def held_out_digits(count):
    """Test-split digits as the 8x8 grey PNGs a user would hand to predict.py, with their labels."""
    from flax_mobilenet.training.sources import digits_arrays
    images, labels = digits_arrays()[1]
    return images[:count, :, :, 0], labels[:count]


def test_a_trained_run_predicts_its_own_classes_by_workdir_as_it_was_evaluated(digits_run, tmp_path):
    """predict.py serves the run with the transform its evaluation used (digits: a plain resize to 32, no crop)
    and its own labels: on the 360 held-out digits it scores what the run's eval printed for that step."""
    from PIL import Image
    workdir, _ = digits_run
    metadata = json.loads((workdir / "model.json").read_text())
    preprocessing = metadata["preprocessing"]
    assert (preprocessing["resize_mode"], preprocessing["crop_size"], preprocessing["labels"]) == ("fixed", 32, "digits")
    assert "imagenet" not in json.dumps(metadata).lower() and metadata["class_names"] == [str(d) for d in range(10)]
    images, labels = held_out_digits(360)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"digit{i}.png"))
        Image.fromarray(image).save(paths[-1])
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(workdir), "--json",
                             "--batch-size", "120", *paths], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads(result.stdout)
    assert all(len(p["top5"]) == 5 for p in predictions)
    correct = sum(p["top5"][0]["label"] == str(label) for p, label in zip(predictions, labels))  # its 10 labels
    best = max(read_jsonl(workdir / "metrics.jsonl"), key=lambda m: (m["eval_top1"], m["step"]))  # ties: latest
    assert correct == round(best["eval_top1"] * 360), (correct, best)


def test_eval_only_and_init_from_take_the_best_step_of_a_workdir(digits_run, tmp_path):
    workdir, _ = digits_run
    best = max(read_jsonl(workdir / "metrics.jsonl"), key=lambda m: (m["eval_top1"], m["step"]))  # ties: latest
    result = run_train(tmp_path / "eval", "--config.eval_only=True", f"--config.init_from={workdir}")
    assert f"init_from: {workdir} step {best['step']} (best eval_top1 {best['eval_top1']:.4f})" in result.stdout
    assert read_jsonl(tmp_path / "eval" / "metrics.jsonl")[-1]["eval_top1"] == pytest.approx(best["eval_top1"])
    step_folder = workdir / "checkpoints" / str(best["step"])
    result = run_train(tmp_path / "tune", f"--config.init_from={step_folder}", "--config.num_train_steps=2",
                       "--config.eval_every_steps=2", "--config.progress_bar=False", "--config.ema_decay=0.99")
    assert f"init_from: {workdir} step {best['step']} (as asked)" in result.stdout
    tuned = read_jsonl(tmp_path / "tune" / "metrics.jsonl")[-1]  # with an EMA, whose start is a copy of the loaded
    assert tuned["eval_top1"] >= 0.9 and tuned["eval_ema_top1"] >= 0.9  # weights (fine-tuned from 99%, not 10%)


@pytest.mark.parametrize("format", ["stablehlo", pytest.param("onnx", marks=pytest.mark.export),
                                    pytest.param("tflite", marks=pytest.mark.export)])
def test_a_trained_run_exports_by_workdir_with_its_contract(digits_run, tmp_path, format):
    """export.py takes the run's best step, its 32x32 input, its digits preprocessing and its 10 labels; the
    export, run in its runtime, classifies held-out digits as the run does."""
    import numpy as np

    from flax_mobilenet.export import load_exported
    from flax_mobilenet.preprocessing import preprocess_for
    from flax_mobilenet.checkpoint import eval_transform, load_metadata

    workdir, _ = digits_run
    best = max(read_jsonl(workdir / "metrics.jsonl"), key=lambda m: (m["eval_top1"], m["step"]))  # ties: latest
    output = tmp_path / format
    result = subprocess.run([sys.executable, str(ROOT / "export.py"), "--checkpoint", str(workdir), "--output",
                             str(output), "--format", format], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"from {workdir} step {best['step']} (best eval_top1" in result.stderr
    contract = json.loads((output / "export.json").read_text())
    assert contract["labels"] == [str(d) for d in range(10)] and contract["num_classes"] == 10
    assert contract["input"]["crop_size"] == 32 and contract["check"]["max_rel_diff"] <= 1e-4
    images, labels = held_out_digits(16)
    transform = eval_transform(load_metadata(workdir))
    from PIL import Image
    batch = np.stack([preprocess_for(Image.fromarray(image).convert("RGB"), transform) for image in images])
    run = load_exported(output)
    logits = np.concatenate([np.asarray(run(x[None])) for x in batch]) if format == "tflite" else run(batch)
    assert (np.asarray(logits).argmax(-1) == labels).mean() >= 0.9


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """SMALL_RUN uninterrupted on one device: the reference the parallel and resumed runs must reproduce."""
    workdir = tmp_path_factory.mktemp("straight")
    run_train(workdir, *SMALL_RUN, devices=1)
    return workdir


@pytest.mark.slow
def test_eight_devices_follow_the_single_device_trajectory(tmp_path, straight_run):
    """Same global batch over 8 simulated CPU devices: BatchNorm sees the global batch, so losses agree.

    Tolerance 1e-4 relative per step (measured 4e-5): the 12 steps are inside the lr warm-up, where per-device
    BatchNorm statistics would still show; later, XLA:CPU's YNNPACK gradient error (README) makes runs drift.
    """
    run_train(tmp_path / "eight", *SMALL_RUN, devices=8)
    one, eight = read_jsonl(straight_run / "train_metrics.jsonl"), read_jsonl(tmp_path / "eight" / "train_metrics.jsonl")
    assert [r["step"] for r in one] == [r["step"] for r in eight] == list(range(1, 13))
    for a, b in zip(one, eight):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    final_one, final_eight = read_jsonl(straight_run / "metrics.jsonl")[-1], read_jsonl(tmp_path / "eight" / "metrics.jsonl")[-1]
    assert final_eight["eval_loss"] == pytest.approx(final_one["eval_loss"], rel=1e-3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path, straight_run):
    """Two jax.distributed processes on localhost (1 CPU device each) train like one process, one device."""
    single = straight_run
    port = _free_port()
    procs = [run_train(tmp_path / "multi", *SMALL_RUN, f"--coordinator_address=127.0.0.1:{port}",
                       "--num_processes=2", f"--process_id={i}", devices=1, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert "2 process(es), 2 cpu device(s) (1 local)" in outputs[0]
    multi = read_jsonl(tmp_path / "multi" / "train_metrics.jsonl")
    for a, b in zip(read_jsonl(single / "train_metrics.jsonl"), multi, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    assert read_jsonl(tmp_path / "multi" / "metrics.jsonl")[-1]["eval_top1"] == pytest.approx(
        read_jsonl(single / "metrics.jsonl")[-1]["eval_top1"], abs=1 / 360 + 1e-9)


def kill_after_checkpoint(proc: subprocess.Popen, workdir: Path, step: int, last_step: int) -> None:
    """SIGKILL a training run once its checkpoint `step` exists, and check it died before `last_step`."""
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / str(step)).is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert killed_at < last_step, "the run finished before it could be killed; the test proves nothing"


@pytest.mark.slow
def test_sigkill_then_rerun_ends_exactly_like_an_uninterrupted_run(tmp_path, straight_run):
    workdir = tmp_path / "killed"
    kill_after_checkpoint(run_train(workdir, *SMALL_RUN, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                          workdir, step=6, last_step=12)
    result = run_train(workdir, *SMALL_RUN)
    assert "resuming from" in result.stdout
    assert read_jsonl(workdir / "metrics.jsonl") == read_jsonl(straight_run / "metrics.jsonl")
    resumed_losses = [r["loss"] for r in read_jsonl(workdir / "train_metrics.jsonl")]
    assert resumed_losses == [r["loss"] for r in read_jsonl(straight_run / "train_metrics.jsonl")]


@pytest.mark.parametrize("signal_number, name, code", [(signal.SIGTERM, "SIGTERM", 143),
                                                        (signal.SIGINT, "Ctrl-C (SIGINT)", 130)])
def test_sigterm_and_ctrl_c_save_and_exit(tmp_path, signal_number, name, code):
    proc = run_train(tmp_path, *SMALL_RUN, "--config.checkpoint_every_steps=100", stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "train_metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal_number)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == code, output[-3000:]
    assert f"{name}: saved step" in output and "Traceback" not in output, output[-3000:]
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) < 12  # saved at the step it was told to stop (resuming is tested above)


@pytest.mark.slow
def test_divergence_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tmp_path, straight_run):
    shutil.copytree(straight_run, tmp_path, dirs_exist_ok=True)  # finished at step 12; go on with a huge lr
    result = run_train(tmp_path, *SMALL_RUN, "--config.learning_rate=1e30", "--config.num_train_steps=18",
                       check=False)
    assert result.returncode == 1
    assert "training diverged (NaN/inf loss, gradient or weights) at step 13" in result.stderr, result.stderr[-3000:]
    assert f"the last good checkpoint is step 12 in {tmp_path / 'checkpoints'}" in result.stderr
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == 12
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--config.model.name=mobilenet_v9"], "unknown model 'mobilenet_v9'"),
    (["--config.model.name=ssdlite320_mobilenet_v3_large"],
     "ssdlite320_mobilenet_v3_large is a detection model, but dataset 'digits' is for classification: use 'shapes'"),
    (["--config.model.name=yolov8n", "--config.dataset=shapes"], "config.model: yolov8n does not take"),
    (["--config.dataset=no_such_dataset_xyz"], "no_such_dataset_xyz"),
    (["--config.batch_size=30"], "batch_size=30 must be a positive multiple of the 8 devices"),
    (["--config.model.num_classes=7"], "has 10 classes but config.model.num_classes=7"),
    (["--config.model.no_such_key=1"], "the config has no key 'no_such_key'"),
    (["--config.batch_size=many"], "flag --config.batch_size=many: invalid literal"),
    (["--config.model=mobilenet_v2"], "config.model is a group of keys, not a value: set one of them, e.g. "
                                      "--config.model.name=..."),
    (["--config.frozen_layers=14"], "config.frozen_layers=14 must be an integer from 0 to the model's 13 layers "
     "(features_0..features_12)"),
    (["--config.init_from=no/such/weights"], "init_from=no/such/weights: no checkpoint at no/such/weights: expected "
     "a folder written by convert_weights.py or train.py"),
    (["--config.init_from=no/such/weights"], "make it with `python convert_weights.py --model NAME --input FILE.pth "
     "--output no/such/weights`"),
])
def test_bad_config_values_give_one_clear_error(tmp_path, flags, message):
    result = run_train(tmp_path / "runs" / "run", *flags, devices=8, check=False)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "a failed start left the folders it made behind"


def test_a_batch_size_off_the_recipe_is_explained():
    from flax_mobilenet.training.defaults import base_config
    from flax_mobilenet.training.trainer import batch_size_notes
    config = base_config()
    config.update(batch_size=7, base_batch_size=0, learning_rate=3e-3)
    unscaled, small = batch_size_notes(config, recipe_batch_size=64)
    assert unscaled.startswith("warning: config.batch_size=7 differs from the recipe's 64") and \
        "--config.base_batch_size=64" in unscaled
    assert "BatchNorm sees 7 images per device" in small
    config.update(batch_size=512, base_batch_size=256, learning_rate=0.1)
    assert batch_size_notes(config, recipe_batch_size=1024) == [
        "config.batch_size=512 (the recipe's is 1024): the learning rate is scaled linearly to 0.2 (0.1 per 256 "
        "images)"]
    config.batch_size = 1024
    assert batch_size_notes(config, recipe_batch_size=1024) == []


def test_unwritable_workdir_is_reported(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_train(blocker / "workdir", check=False)
    assert result.returncode == 1
    assert f"cannot write to workdir {blocker / 'workdir'}" in result.stderr, result.stderr[-3000:]
