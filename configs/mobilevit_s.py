"""MobileViT-S on ImageNet with the published recipe (78.4% top-1 in the paper; timm's port of the weights 78.298%).

Sources: apple/ml-cvnets config/classification/mobilevit_small.yaml, the paper authors' training config
(read for these numbers): 128 images/GPU x 8 GPUs, adamw beta1 0.9 / beta2 0.999, weight_decay 0.01 with
no_decay_bn_filter_bias false, cosine max_lr 0.002 / min_lr 0.0002, warmup_iterations 3000 from
warmup_init_lr 0.0002, max_epochs 300, label_smoothing 0.1, classifier_dropout 0.1, EMA momentum 0.0005,
mixed precision, random resized crop + horizontal flip, variable-batch sampler around 256x256.  The
MobileViT paper (Mehta & Rastegari, ICLR 2022, arXiv:2110.02178, Sec. 4.1) describes the same recipe:
300 epochs, effective batch 1,024 on 8 GPUs, AdamW, label smoothing, multi-scale sampler, cosine schedule.
Differences our trainer imposes: warm-up starts at 0 and the cosine ends at 0 (not 0.0002); a fixed
256x256 training size instead of ml-cvnets' multi-scale sampler (160-320); no dropout inside the
transformer (ml-cvnets' mit.dropout 0.1; timm's model has none).
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="mobilevit_s", num_classes=1000, dropout=0.1)  # ml-cvnets classifier_dropout
    config.dataset = "imagenet2012"
    config.image_size = 256  # ml-cvnets vbs crop_size 256; timm's pretrained_cfg input_size 256
    config.batch_size = 1024  # 128 per GPU x 8 GPUs (ml-cvnets yaml comment, paper Sec. 4.1)
    config.num_epochs = 300
    config.optimizer.update(name="adamw", b1=0.9, b2=0.999, eps=1e-8)  # eps: torch AdamW's default
    config.learning_rate = 0.002  # cosine max_lr at batch 1024
    config.base_batch_size = 1024
    # 3000 warm-up iterations at 1,251 steps per epoch (1,281,167 images // 1024).
    config.lr_schedule.update(name="cosine", warmup_epochs=3000 / (IMAGENET_TRAIN_IMAGES // 1024))
    config.weight_decay = 0.01  # decoupled (AdamW), on every parameter (no_decay_bn_filter_bias: false)
    config.weight_decay_skip_bn_bias = False
    config.label_smoothing = 0.1
    config.ema_decay = 1.0 - 0.0005  # ml-cvnets EMA momentum 0.0005 is the weight of the new parameters
    config.augment.update(random_resized_crop=True, crop_scale_min=0.08, flip=True, policy="none")
    config.half_precision = True  # ml-cvnets mixed_precision: true
    return config
