"""Every config key the trainer reads, with neutral defaults; `configs/*.py` set the recipes on top."""
import ml_collections
from ml_collections.config_dict import placeholder


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name="mobilenet_v3_small",
        num_classes=-1,  # -1: the dataset's number of classes
        dropout=0.2,
        depthwise_impl="auto",  # 'slices' (CPU) or 'lax' (GPU/TPU) when 'auto'
    ))

    config.dataset = "imagenet2012"  # a TFDS name, 'digits', 'folder:/path/with/one/folder/per/class'; 'shapes'
    # (dense), 'coco:/path/to/coco', 'voc:/path/to/VOCdevkit/VOC2012'
    config.data_dir = placeholder(str)  # TFDS data_dir (prepared with `tfds build`)
    config.train_split = placeholder(str)  # None: 'train' (COCO folders: 'train2017')
    config.eval_split = placeholder(str)  # None: 'validation', else 'test' (COCO folders: 'val2017'; VOC: 'val')
    config.shuffle_buffer_size = 16_384
    config.image_size = 224
    config.max_boxes = 100  # detection from COCO / VOC / TFDS: boxes per image in a batch (padding rows: label 0)
    config.batch_size = 1024  # global, over all devices of all hosts
    config.eval_batch_size = 0  # 0: batch_size
    # letterboxed detectors (YOLO): evaluate as ultralytics' val does, in rectangular batches (images sorted by
    # aspect ratio, each batch letterboxed to its own multiple-of-32 shape, pad 0.5); False: image_size squares
    config.eval_rect = True
    config.augment = ml_collections.ConfigDict(dict(
        random_resized_crop=True,
        crop_scale_min=0.08,
        # the crop's resize: antialiased (PIL's, as torchvision on PIL images) or plain bilinear (big_vision; cheaper)
        crop_antialias=True,
        flip=True,
        policy="none",  # 'none' | 'autoaugment' (ImageNet policy) | 'randaugment'
        randaugment_num_ops=2,
        randaugment_magnitude=9,
        random_erasing=0.0,  # probability
        scale_range=(0.5, 2.0),  # segmentation: random resize of the shorter side, x base_size (torchvision's)
        base_size=0,  # segmentation: the size scale_range multiplies (torchvision: 520, crop 480); 0: image_size
        # detection: 'auto' (the head's own: SSD 'ssdlite', YOLO 'yolo'), torchvision's 'ssdlite' (IoU crop, flip) or
        # 'ssd' (+ colour, zoom out), ultralytics' 'yolo' (mosaic, random perspective, HSV, flip)
        detection_recipe="auto",
        # the 'yolo' recipe, ultralytics' names and defaults (cfg/default.yaml)
        mosaic=1.0,  # 0: off; else mosaic of 4 images (ultralytics' probability; here on or off)
        close_mosaic=10,  # mosaic off for the last N epochs
        translate=0.1,  # random perspective: translation (fraction of the size) and scale gain (+/-)
        scale=0.5,
        hsv_h=0.015,  # HSV gains
        hsv_s=0.7,
        hsv_v=0.4,
        fliplr=0.5,  # horizontal flip probability
    ))

    config.num_epochs = 1
    config.num_train_steps = -1  # -1: num_epochs * (train examples // batch_size)
    config.optimizer = ml_collections.ConfigDict(dict(
        name="sgd",  # 'sgd' | 'rmsprop' | 'adamw'
        momentum=0.9,
        nesterov=False,
        decay=0.9,  # rmsprop: torch's alpha
        eps=1e-8,
        b1=0.9,
        b2=0.999,
    ))
    config.learning_rate = 0.1  # per base_batch_size images
    config.base_batch_size = 256  # lr scales linearly with batch_size / base_batch_size; 0: no scaling
    config.lr_schedule = ml_collections.ConfigDict(dict(
        name="step",  # 'step' (x decay_rate every decay_epochs) | 'cosine' | 'poly' (power, per step) | 'constant'
        # | 'ultralytics' (its YOLO trainer: per-epoch linear to lr x lrf, per-iteration warm-up, 3 param groups)
        power=0.9,  # 'poly'
        decay_rate=1.0,
        decay_epochs=1.0,
        warmup_epochs=0.0,
        lrf=0.01,  # 'ultralytics': the final lr fraction
        warmup_bias_lr=0.1,  # 'ultralytics': the biases' lr at the warm-up's start (then down to the lr)
        warmup_momentum=0.8,  # 'ultralytics': the momentum at the warm-up's start (then up to optimizer.momentum)
    ))
    config.weight_decay = 0.0  # coupled L2, as torch's weight_decay=
    config.weight_decay_skip_bn_bias = False
    # ultralytics' nbs (64): weight decay x batch_size / nbs (its x batch x accumulate / nbs, we do not accumulate;
    # optim.effective_weight_decay); 0: weight_decay as it is
    config.weight_decay_nominal_batch_size = 0
    config.label_smoothing = 0.0
    config.ema_decay = 0.0  # 0: no EMA of the weights; else also evaluates the EMA weights
    # ultralytics' ModelEMA ramp: decay ema_decay * (1 - exp(-updates / ema_tau)), updates from 1; 0: constant
    config.ema_tau = 0.0
    config.grad_clip_norm = 0.0  # 0: no clipping
    config.frozen_layers = 0  # fine-tuning: the first N backbone layers (features_0..N-1) are not trained

    config.seed = 0
    config.half_precision = False  # bfloat16 compute; params and optimizer state stay float32
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3  # the latest N, plus the best by the task's metric (eval_top1, eval_miou, eval_map)
    config.async_checkpointing = True
    # before the first step: stop (with the batch size that fits) when the compiled steps need more memory than the
    # devices have free; False runs anyway (e.g. when swap or unified memory makes up the difference)
    config.memory_preflight = True
    config.progress_bar = True
    config.init_from = placeholder(str)  # converted or trained checkpoint to fine-tune from
    config.eval_only = False
    return config


def torchvision_v3_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """torchvision's MobileNetV3 ImageNet recipe (8 GPUs x 128): RMSprop, x0.973 every 2 epochs, 600 epochs."""
    config.batch_size = 1024
    config.num_epochs = 600
    config.optimizer.update(name="rmsprop", decay=0.9, momentum=0.9, eps=0.0316)
    config.learning_rate = 0.064
    config.base_batch_size = 1024
    config.lr_schedule.update(name="step", decay_rate=0.973, decay_epochs=2.0)
    config.weight_decay = 1e-5
    config.augment.update(policy="autoaugment", random_erasing=0.2)
    config.half_precision = True
    return config


def torchvision_v2_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """torchvision's MobileNetV2 ImageNet recipe (8 GPUs x 32): SGD, x0.98 every epoch, 300 epochs."""
    config.batch_size = 256
    config.num_epochs = 300
    config.optimizer.update(name="sgd", momentum=0.9)
    config.learning_rate = 0.045
    config.base_batch_size = 256
    config.lr_schedule.update(name="step", decay_rate=0.98, decay_epochs=1.0)
    config.weight_decay = 4e-5
    config.half_precision = True
    return config


def torchvision_segmentation_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """torchvision's segmentation reference for the MobileNetV3 models (8 GPUs x 4 images)."""
    config.dataset = "coco:/path/to/coco"  # a placeholder: override with the folder of COCO 2017
    config.image_size = 480  # the crop; the random resize is around base_size
    config.augment.base_size = 520
    config.augment.scale_range = (0.5, 2.0)
    config.batch_size = 32
    config.num_epochs = 30
    config.optimizer.update(name="sgd", momentum=0.9, nesterov=False)
    config.learning_rate = 0.01
    config.base_batch_size = 32
    config.lr_schedule.update(name="poly", power=0.9, warmup_epochs=0.0)
    config.weight_decay = 1e-6
    config.half_precision = True
    config.log_every_steps = 100
    config.eval_every_steps = 3_000
    config.checkpoint_every_steps = 1_000
    return config


def cpu_quickstart_recipe(config: ml_collections.ConfigDict, warmup_epochs: float) -> ml_collections.ConfigDict:
    """The quickstarts' optimizer (embedded datasets, a 2-core CPU, minutes): AdamW 3e-3 unscaled, cosine after a
    short warm-up, weight decay 1e-4 off BatchNorm and biases."""
    config.optimizer.update(name="adamw")
    config.learning_rate = 3e-3
    config.base_batch_size = 0
    config.lr_schedule.update(name="cosine", warmup_epochs=warmup_epochs)
    config.weight_decay = 1e-4
    config.weight_decay_skip_bn_bias = True
    return config


def ultralytics_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """ultralytics 8.4's YOLO training recipe (cfg/default.yaml, engine/trainer.py) with `optimizer=SGD`:
    640 px, 100 epochs, batch 16 (a config sets its own batch_size: the weight decay scales with it); SGD
    nesterov, momentum 0.937, lr0 0.01 unscaled by the batch; its schedule ('ultralytics': linear to lr0 x lrf 0.01
    per epoch; 3 warm-up epochs, momentum from 0.8, bias lr from 0.1); weight decay 5e-4 x batch / nbs 64 on the
    kernels only; gradients clipped to norm 10 (`optimizer_step`); ModelEMA 0.9999, tau 2000; the 'yolo'
    augmentation (its keys in config.augment are ultralytics' defaults).

    Where we differ (see optim.py): ultralytics steps every max(round(64 / batch), 1) batches (1 from batch 43 up),
    we every batch; `optimizer=auto` (its default) would pick MuSGD above 10,000 iterations (AdamW below), the
    explicit SGD is the documented choice and the one these hyperparameters are for."""
    config.image_size = 640
    config.num_epochs = 100
    config.batch_size = 16
    config.optimizer.update(name="sgd", momentum=0.937, nesterov=True)
    config.learning_rate = 0.01
    config.base_batch_size = 0  # no linear lr scaling: ultralytics scales the weight decay instead
    config.lr_schedule.update(name="ultralytics", lrf=0.01, warmup_epochs=3.0, warmup_momentum=0.8,
                              warmup_bias_lr=0.1)
    config.weight_decay = 5e-4
    config.weight_decay_nominal_batch_size = 64
    config.weight_decay_skip_bn_bias = True
    config.grad_clip_norm = 10.0
    config.ema_decay = 0.9999
    config.ema_tau = 2000.0
    config.augment.detection_recipe = "yolo"
    return config
