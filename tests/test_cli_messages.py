"""What a new user reads from the CLIs: one-line errors that say what to do, help that says where things are.

Most messages are checked in-process (the function that makes them); one train.py run checks the whole line.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flax_mobilenet as fm
from flax_mobilenet.training import command_line

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "v3_small_digits.py")
KEYS = "(keys: flax_mobilenet/training/defaults.py and the config file)"


def load_cli(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli_messages", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    """train.py imported once (its absl flags are global); ml_collections reads the overrides from sys.argv."""
    sys.path.insert(0, str(ROOT))
    try:
        import train as module
    finally:
        sys.path.remove(str(ROOT))
    yield module
    module.FLAGS.unparse_flags()


def parse_error(train, monkeypatch, *flags):
    argv = ["train.py", "--config", DIGITS, "--workdir", "/nonexistent/run", *flags]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        train.parse_flags(argv)
    return exit_info.value.code


def test_an_unknown_config_key_is_one_line_with_the_closest_key():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", DIGITS, "--workdir", "/nonexistent/x",
                             "--config.num_epoch=3"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert result.stderr == f"error: the config has no key 'num_epoch'; did you mean 'num_epochs'? {KEYS}\n"


def test_a_nested_unknown_key_names_its_group_and_the_whole_key_to_use(train, monkeypatch):
    assert parse_error(train, monkeypatch, "--config.model.nam=mobilenet_v2") == (
        f"error: the config has no key 'nam' in config.model; did you mean 'model.name'? {KEYS}")
    assert parse_error(train, monkeypatch, "--config.modl.name=mobilenet_v2") == (
        f"error: the config has no key 'modl'; did you mean 'model'? {KEYS}")
    assert parse_error(train, monkeypatch, "--config.zzzzzz=1") == f"error: the config has no key 'zzzzzz' {KEYS}"
    # ml_collections' message without its suggestion: the closest key of the defaults at that level
    assert command_line.unknown_key_message(KeyError("'flp'"), ["train.py", "--config.augment.flp=1"]) == (
        f"error: the config has no key 'flp' in config.augment; did you mean 'augment.flip'? {KEYS}")


def test_a_missing_config_file_is_one_line_listing_the_configs(train, monkeypatch):
    for flags in (["--config", "configs/nope.py"], ["--config=configs/nope.py:small"]):
        argv = ["train.py", *flags, "--workdir", "/nonexistent/run"]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            train.parse_flags(argv)
        message = exit_info.value.code
        assert message.startswith("error: no config file configs/nope.py (configs/ holds: ") and "\n" not in message
        assert "v3_small_digits.py" in message and "ssdlite_shapes.py" in message


def test_train_help_says_how_to_override_where_the_keys_are_and_how_to_list_models(train):
    doc = train.__doc__  # what absl prints for --help, above the flags
    for text in ("--config.KEY=VALUE", "--config.batch_size=64", "--config.model.name=",
                 "flax_mobilenet/training/defaults.py", "python predict.py --list-models"):
        assert text in doc, text
    assert "%" not in doc  # absl formats the docstring with %
    assert "--config.KEY=VALUE" in train.FLAGS["config"].help


def test_list_models_gives_each_name_its_task_and_reference_weights(capsys):
    predict = load_cli("predict")
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args(["--list-models"])  # no --checkpoint or image needed
    assert exit_info.value.code == 0
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert sorted(rows) == fm.list_models()
    assert rows["mobilenet_v2"] == ["classification", "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"]
    assert rows["lraspp_mobilenet_v3_large"][0] == "segmentation"
    assert rows["lraspp_mobilenet_v2"] == ["segmentation", "none published (train it with train.py)"]
    assert rows["ssdlite320_mobilenet_v3_large"][0] == "detection" and rows["yolov8n"][0] == "detection"
    with pytest.raises(SystemExit):
        predict.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "Classify, segment or detect" in help_text and "--list-models" in help_text


def test_predict_says_which_step_of_a_training_run_it_loaded(tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp
    from PIL import Image

    from flax_mobilenet.checkpoint import STATE_ITEM, manager_options

    workdir = tmp_path / "run"
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=manager_options(enable_async_checkpointing=False))
    for step, top1 in ((400, 0.9972), (440, 0.9944)):  # the digits run: its best step is not its last
        state = {"params": {"w": np.full(2, step, np.float32)}, "batch_stats": {"m": np.zeros(2, np.float32)}}
        manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state)}),
                     metrics={"eval_top1": top1})
    manager.wait_until_finished()
    manager.close()
    (workdir / "model.json").write_text('{"model": "mobilenet_v3_small", "num_classes": 10}')
    image = tmp_path / "digit.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    predict = load_cli("predict")
    loaded = []

    def fake_compile(name, variables, *args, **kwargs):  # the message is the point, not the model
        loaded.append(int(variables["params"]["w"][0]))
        return lambda x: np.zeros((len(x), 10), np.float32)
    monkeypatch.setattr(predict, "compile_inference", fake_compile)
    monkeypatch.setattr(predict, "enable_compilation_cache", lambda: None)
    assert predict.main(["--checkpoint", str(workdir), "--image-size", "32", str(image)]) == 0
    assert f"loaded {workdir} step 400 (best eval_top1 0.9972)\n" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(workdir), "--step", "440", "--image-size", "32", str(image)]) == 0
    assert f"loaded {workdir} step 440 (as asked)\n" in capsys.readouterr().err
    assert loaded == [400, 440]


def test_export_and_convert_refuse_an_existing_output_naming_overwrite(tmp_path, capsys):
    export = load_cli("export")
    output = tmp_path / "exported"
    output.mkdir()
    (output / "export.json").write_text("an earlier export")
    argv = ["--checkpoint", str(tmp_path / "missing"), "--output", str(output)]
    assert export.main(argv) == 1
    assert capsys.readouterr().err == (f"error: {output} exists and is not empty: pass --overwrite to write the "
                                       f"export into it, or choose another --output\n")
    assert (output / "export.json").read_text() == "an earlier export"
    assert export.main([*argv, "--overwrite"]) == 1  # past the check: the checkpoint is missing
    assert f"no checkpoint at {tmp_path / 'missing'}" in capsys.readouterr().err

    convert = load_cli("convert_weights")
    checkpoint = tmp_path / "converted"
    (checkpoint / "variables").mkdir(parents=True)
    argv = ["--model", "mobilenet_v2", "--input", str(tmp_path / "missing.pth"), "--output", str(checkpoint)]
    assert convert.main(argv) == 1
    assert capsys.readouterr().err == (f"error: {checkpoint} already holds a checkpoint: pass --overwrite to replace "
                                       f"it, or choose another --output\n")
    assert convert.main([*argv, "--overwrite"]) == 1  # past the check: the input file is missing
    assert "--overwrite" not in capsys.readouterr().err


def test_the_readme_output_folder_is_ignored_and_the_digits_numbers_match_the_run():
    readme = (ROOT / "README.md").read_text()
    assert "--output-dir pictures" in readme
    assert "/pictures/" in (ROOT / ".gitignore").read_text().splitlines()
    assert "99.4%" not in readme and "best: step 400, 99.72%; last (440): 99.44%" in readme
    assert "best eval_top1 0.9972" in readme and "--list-models" in readme
    assert "a run of 440 steps" in (ROOT / "configs" / "v3_small_digits.py").read_text()


@pytest.mark.export
def test_tflite_tensor_names_are_the_export_json_names(tmp_path):
    import jax

    from flax_mobilenet.export import export_model
    from flax_mobilenet.export.tflite import SIGNATURE, interpreter

    name, size = "mobilenet_v3_small", 32
    model = fm.create_model(name, num_classes=10)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
    rng = np.random.default_rng(0)  # no model.init to compile: He-scaled kernels, BatchNorm near identity

    def fill(path, leaf):
        key = jax.tree_util.keystr(path)
        if len(leaf.shape) > 1:
            return (rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        return (0.5 + rng.random(leaf.shape) if "var" in key or "scale" in key
                else 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    export_model(name, variables, tmp_path, image_size=size, format="tflite", num_classes=10)
    contract = json.loads((tmp_path / "export.json").read_text())
    inputs, outputs = [contract["input"]["name"]], [entry["name"] for entry in contract["outputs"]]
    assert (inputs, outputs) == (["images"], ["logits"])
    runtime = interpreter((tmp_path / "model.tflite").read_bytes())
    assert [d["name"] for d in runtime.get_input_details()] == inputs
    assert [d["name"] for d in runtime.get_output_details()] == outputs
    runner = runtime.get_signature_runner(SIGNATURE)
    assert list(runner.get_input_details()) == inputs and list(runner.get_output_details()) == outputs
