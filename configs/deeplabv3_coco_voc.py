"""DeepLabV3 on MobileNetV3-Large with the auxiliary loss, as torchvision's COCO_WITH_VOC_LABELS_V1 weights (60.3 mIoU
published).

torchvision's references/segmentation, README: `train.py --dataset coco -b 4 --model deeplabv3_mobilenet_v3_large
--aux-loss --wd 0.000001` on 8 GPUs; the rest as `lraspp_coco_voc.py` (`defaults.torchvision_segmentation_recipe`) (SGD 0.9, lr 0.01, 30 epochs, poly 0.9,
520 / 480 crops of COCO with the 20 VOC classes).  The loss is out + 0.5 x aux.  Deviation: torchvision's optimizer
gives the auxiliary head 10x the learning rate (its own parameter group); here every parameter has the same one.
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config, torchvision_segmentation_recipe


def get_config() -> ml_collections.ConfigDict:
    config = torchvision_segmentation_recipe(base_config())
    config.model.update(name="deeplabv3_mobilenet_v3_large", num_classes=21)
    config.model.aux_loss = True
    return config
