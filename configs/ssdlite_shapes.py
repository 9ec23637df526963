"""Quickstart: SSDLite on MobileNetV3-Large detecting the embedded `shapes` on a 2-core CPU."""
import ml_collections

from flax_mobilenet.training.defaults import base_config, cpu_quickstart_recipe


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="ssdlite320_mobilenet_v3_large", num_classes=-1)
    config.model.bn_momentum = 0.1  # torchvision's 0.03 is too slow for a run of a few hundred steps
    config.dataset = "shapes"  # 2,000 train / 300 validation images, 5 classes; 1-4 objects each
    config.image_size = 128
    config.batch_size = 16
    config.augment.detection_recipe = "ssdlite"
    config.num_epochs = 6
    cpu_quickstart_recipe(config, warmup_epochs=0.2)
    config.log_every_steps = 25
    config.eval_every_steps = 250
    config.checkpoint_every_steps = 250
    return config
