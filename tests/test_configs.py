"""Every config builds the model it names."""
import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

import flax_mobilenet as fm

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_its_model(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    options = dict(config.model)
    name = options.pop("name")
    assert name in fm.list_models()
    if options["num_classes"] == -1:  # the dataset's
        from flax_mobilenet.training.experiment import Experiment
        options["num_classes"] = Experiment(config).num_classes
    model = fm.create_model(name, **options)
    size = config.image_size
    outputs, _ = jax.eval_shape(model.init_with_output, jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    # a detector's class scores per anchor; a segmentation model with an auxiliary head: its main output
    logits = (next(outputs[k] for k in ("cls_logits", "class_logits", "out") if k in outputs)
              if isinstance(outputs, dict) else outputs)
    assert logits.shape[-1] == options["num_classes"] > 1


def test_there_is_a_config_per_core_architecture():
    assert {p.stem for p in CONFIGS} >= {"v1", "v2", "v3_large", "v3_small"}
