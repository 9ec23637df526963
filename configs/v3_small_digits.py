"""Quickstart: MobileNetV3-Small on the embedded `digits` dataset, a few minutes on a 2-core CPU, offline."""
import ml_collections

from flax_mobilenet.training.defaults import base_config, cpu_quickstart_recipe


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="mobilenet_v3_small", num_classes=10, dropout=0.2)
    config.model.width_mult = 1.0
    config.model.bn_momentum = 0.1  # torchvision V3 uses 0.01: too slow for a run of 440 steps
    config.dataset = "digits"  # scikit-learn's 8x8 digits, upscaled; 1,437 train / 360 test
    config.image_size = 32
    config.batch_size = 64
    config.augment.update(random_resized_crop=True, crop_scale_min=0.6, flip=False)
    config.num_epochs = 20
    cpu_quickstart_recipe(config, warmup_epochs=1.0)
    config.log_every_steps = 20
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    return config
