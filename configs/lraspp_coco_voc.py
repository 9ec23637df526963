"""LR-ASPP on MobileNetV3-Large, trained as torchvision's COCO_WITH_VOC_LABELS_V1 weights were (57.9 mIoU published).

torchvision's references/segmentation, README: `train.py --dataset coco -b 4 --model lraspp_mobilenet_v3_large
--wd 0.000001` on 8 GPUs, with train.py's defaults for the rest: SGD momentum 0.9, lr 0.01 (no --lr given),
30 epochs, lr x (1 - iter / total) ** 0.9 per iteration, no warm-up; the dataset is COCO 2017 restricted to the
20 VOC categories (`coco:` below does that), RandomResize(0.5-2x of 520) + flip + RandomCrop(480); eval resizes the
shorter side to 520.  Deviations: eval resizes to image_size x image_size (fixed batch shapes) instead of the shorter
side to 520 at the original aspect.

Set the data: --config.dataset=coco:/path/to/coco (train2017/, val2017/, annotations/instances_*2017.json).
torchvision starts from ImageNet weights (--weights-backbone MobileNet_V3_Large_Weights.IMAGENET1K_V1): pass a
converted mobilenet_v3_large checkpoint as --config.init_from to do the same.
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config, torchvision_segmentation_recipe


def get_config() -> ml_collections.ConfigDict:
    config = torchvision_segmentation_recipe(base_config())
    config.model.update(name="lraspp_mobilenet_v3_large", num_classes=21)  # background + the 20 VOC classes
    return config
