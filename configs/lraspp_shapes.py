"""Quickstart: LR-ASPP on a dilated MobileNetV2 from torchvision's ImageNet weights, segmenting the embedded
`shapes` on a 2-core CPU in minutes (4 on an idle 2-core VM).

Starts as torchvision's segmentation recipes do, from an ImageNet backbone (the head fresh): convert torchvision's
`mobilenet_v2-b0353104.pth` into checkpoints/mobilenet_v2 first (`bash scripts/quickstart.sh` does), or pass
--config.init_from='' to start from random weights (it then learns far slower).
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config, cpu_quickstart_recipe


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="lraspp_mobilenet_v2", num_classes=-1)
    config.model.bn_momentum = 0.1  # torchvision's 0.01 is too slow for a run of a few hundred steps
    config.init_from = "checkpoints/mobilenet_v2"  # mobilenet_v2's layers become the backbone
    config.frozen_layers = 4  # stem + first blocks (strides 2-4) as loaded: steps 1.5x faster, mIoU 0.687 vs 0.693
    config.dataset = "shapes"  # 2,000 train / 300 validation images, 5 classes + background
    config.image_size = 128
    config.batch_size = 16
    config.augment.scale_range = (0.75, 1.5)  # torchvision's 0.5-2x pads a quarter of the crops with 255 at this size
    config.num_epochs = 3  # 375 steps: mIoU 0.65 at step 250, 0.69 after these (unfrozen: 0.62 after 2 epochs)
    cpu_quickstart_recipe(config, warmup_epochs=0.2)
    config.log_every_steps = 25
    config.eval_every_steps = 125
    config.checkpoint_every_steps = 125
    return config
