"""SSDLite320 on MobileNetV3-Large on COCO 2017, torchvision's reference recipe (21.3 box mAP published).

torchvision's references/detection, README: `train.py --dataset coco --model ssdlite320_mobilenet_v3_large
--epochs 660 --aspect-ratio-group-factor 3 --lr-scheduler cosineannealinglr --lr 0.15 --batch-size 24
--weight-decay 0.00004 --data-augmentation ssdlite` on 8 GPUs (global batch 192): SGD momentum 0.9, cosine over the
epochs, and train.py's warm-up (epoch 0: linear from lr/1000 over min(1000, iterations per epoch - 1) iterations,
about one epoch of COCO at 192: here warmup_epochs=1, linear from 0).  Data: COCO 2017 instances, crowd boxes
skipped, 91 category ids; 'ssdlite' augmentation (IoU crop, flip), plain 320x320 resize.

Set the data: --config.dataset=coco:/path/to/coco (train2017/, val2017/, annotations/instances_*2017.json); TFDS's
'coco/2017' also works (80 contiguous classes: then --config.model.num_classes=81).  torchvision starts from ImageNet
weights (--weights-backbone MobileNet_V3_Large_Weights.IMAGENET1K_V1), and then builds the backbone without the
reduced tail: pass a converted mobilenet_v3_large checkpoint as --config.init_from together with
--config.model.reduced_tail=False to do the same.
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="ssdlite320_mobilenet_v3_large", num_classes=91)  # COCO category ids, 0 = background
    config.dataset = "coco:/path/to/coco"  # a placeholder: override with the folder of COCO 2017
    config.image_size = 320
    config.max_boxes = 100  # boxes per image in a batch; the loader names an image that has more
    config.augment.detection_recipe = "ssdlite"
    config.batch_size = 192
    config.num_epochs = 660
    config.optimizer.update(name="sgd", momentum=0.9, nesterov=False)
    config.learning_rate = 0.15
    config.base_batch_size = 192
    config.lr_schedule.update(name="cosine", warmup_epochs=1.0)
    config.weight_decay = 4e-5
    config.half_precision = True
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_000
    return config
