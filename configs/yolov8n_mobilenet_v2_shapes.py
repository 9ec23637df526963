"""Quickstart: YOLOv8n's head on MobileNetV2 (seed 004's hybrid) from torchvision's ImageNet weights, detecting the
embedded `shapes` on a 2-core CPU in minutes.

Starts from an ImageNet backbone (the neck and head fresh): convert torchvision's `mobilenet_v2-b0353104.pth` into
checkpoints/mobilenet_v2 first (`bash scripts/quickstart.sh` does), or pass --config.init_from='' to start from
random weights (it then learns far slower).  The loss, augmentation and mAP are ultralytics'; the optimizer is the
CPU quickstarts' AdamW (ultralytics' own `optimizer=auto` also picks AdamW for short runs).
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config, cpu_quickstart_recipe


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="yolov8n_mobilenet_v2", num_classes=-1)
    config.init_from = "checkpoints/mobilenet_v2"  # mobilenet_v2's layers become the backbone
    config.frozen_layers = 4
    config.dataset = "shapes"  # 2,000 train / 300 validation images of 128x128, 5 classes; 1-4 objects each
    config.image_size = 128
    config.batch_size = 16
    config.augment.detection_recipe = "yolo"  # ultralytics' v8_transforms: perspective, HSV, flip ...
    config.augment.mosaic = 0.0  # ... without mosaic: it slows a minutes-long run (mAP50 12% vs 24% at step 125)
    config.num_epochs = 3  # 375 steps: mAP50 24% at step 125, 59% at 250
    cpu_quickstart_recipe(config, warmup_epochs=0.2)
    config.learning_rate = 2e-3  # 1e-3 reached mAP50 30% after the 375 steps (with mosaic)
    config.log_every_steps = 25
    config.eval_every_steps = 375  # the end only: each evaluation costs ~10 s
    config.eval_rect = False  # 128x128 as trained (ultralytics' rectangular val would pad these squares to 160)
    config.checkpoint_every_steps = 125
    return config
