"""MobileNetV1 on ImageNet. torchvision has no V1 recipe; this uses its V2 recipe (SGD, x0.98 per epoch)."""
import ml_collections

from flax_mobilenet.training.defaults import base_config, torchvision_v2_recipe


def get_config() -> ml_collections.ConfigDict:
    config = torchvision_v2_recipe(base_config())
    config.model.update(name="mobilenet_v1", num_classes=1000, dropout=0.0)
    config.model.width_mult = 1.0
    config.dataset = "imagenet2012"
    return config
