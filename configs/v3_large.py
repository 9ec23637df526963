"""MobileNetV3-Large on ImageNet with torchvision's reference recipe (74.042% top-1 published)."""
import ml_collections

from flax_mobilenet.training.defaults import base_config, torchvision_v3_recipe


def get_config() -> ml_collections.ConfigDict:
    config = torchvision_v3_recipe(base_config())
    config.model.update(name="mobilenet_v3_large", num_classes=1000, dropout=0.2)
    config.model.width_mult = 1.0
    config.model.reduced_tail = False
    config.model.dilated = False
    config.dataset = "imagenet2012"
    return config
