"""YOLOv8n on COCO 2017 from scratch, ultralytics' training recipe (8.4, `optimizer=SGD`; 37.3 box mAP published).

ultralytics' facts (cfg/default.yaml, engine/trainer.py; `defaults.ultralytics_recipe`): 640 px; SGD nesterov,
momentum 0.937, lr0 0.01 (not scaled with the batch: ultralytics scales the weight decay instead, 5e-4 x batch /
nbs 64, on conv kernels only: BatchNorm weights and all biases undecayed, its three param groups); per-epoch linear
decay to lr0 x 0.01; 3 warm-up epochs, per iteration: weight lrs from 0 and the bias lr from 0.1 to the epoch's
lr, momentum from 0.8 to 0.937; gradients clipped to norm 10; ModelEMA 0.9999 with tau 2000 (the EMA weights are
the ones ultralytics evaluates and ships: here eval_ema_*); the 'yolo' augmentation (mosaic, off for the last 10
epochs; random perspective translate 0.1 / scale 0.5; HSV 0.015/0.7/0.4; fliplr 0.5).  `num_epochs` 100 is
ultralytics' default; its published YOLOv8 COCO models were trained 500 epochs from scratch (ultralytics issues
#852, #1642): --config.num_epochs=500 for those.  batch_size 64 is ultralytics' nominal batch (nbs): one optimizer
step per 64 images, as ultralytics' (accumulate = round(64 / 64) = 1) and the weight decay exactly 5e-4.

Where this trainer differs:
- `optimizer=auto`, ultralytics' default, picks MuSGD (8.4) for a run this long (AdamW under 10,000 iterations);
  we use SGD, the documented explicit choice (`optimizer=SGD`) these hyperparameters belong to.
- No gradient accumulation: below batch 43 ultralytics sums round(64 / batch) batches per step; we step every batch
  with the weight decay scaled by batch / 64 (optim.effective_weight_decay): the same decay and gradient per image.
- mosaic is on or off (ultralytics: a probability, 1.0 by default); the epoch's batches are a fixed-size
  (drop-remainder) 118,287 // 64 = 1,848 steps, ultralytics' 1,849 with a short last batch.
- Data: ultralytics' own layout (its coco.yaml: 80 classes, 118,287 train images with the background ones), as
  ultralytics trains and as its converted checkpoints (80 classes) fine-tune.  `coco:/path/to/coco` folders work
  too (torchvision's reading: 117,266 images with annotations, 90 category-id classes, 10 never used):
  --config.dataset=coco:/path/to/coco --config.model.num_classes=90.

Set the data: --config.dataset=yolo:/path/to/coco.yaml (ultralytics' images/ + labels/ layout of COCO 2017).
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config, ultralytics_recipe

COCO_TRAIN_IMAGES = 118_287  # train2017 in ultralytics' coco.yaml (background images included)


def get_config() -> ml_collections.ConfigDict:
    config = ultralytics_recipe(base_config())
    config.model.update(name="yolov8n", num_classes=80)  # ultralytics' 80 COCO classes
    config.dataset = "yolo:/path/to/coco.yaml"  # a placeholder: override with ultralytics' COCO 2017 YAML
    config.image_size = 640
    config.max_boxes = 100  # boxes per image in a batch; the loader names an image that has more
    config.batch_size = 64  # ultralytics' nominal batch (nbs 64): weight decay exactly 5e-4, no accumulation
    config.num_epochs = 100  # ultralytics' default; its published COCO models: 500 from scratch
    config.half_precision = True  # ultralytics trains with AMP
    steps_per_epoch = COCO_TRAIN_IMAGES // config.batch_size  # 1,848
    config.log_every_steps = 100
    config.eval_every_steps = steps_per_epoch  # ultralytics validates every epoch
    config.checkpoint_every_steps = steps_per_epoch  # and saves last.pt every epoch
    return config
