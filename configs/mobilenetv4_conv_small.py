"""MobileNetV4-Conv-Small on ImageNet (timm `mobilenetv4_conv_small.e2400_r224_in1k`: 73.756% top-1 published).

Sources, as facts:
- timm's model card for e2400_r224_in1k: "Trained with timm scripts using hyper-parameters (mostly) similar to
  those in the paper"; the tag says 2400 epochs at 224 px.  timm's full args file for it is not public.
- The paper's recipe as TensorFlow Model Garden publishes it for this model
  (tensorflow/models official/vision/configs/experiments/image_classification/
  imagenet_mobilenetv4_conv_small_tpu.yaml, "73.8% @ ~9623 epochs"): AdamW beta1 0.6, eps 1e-6, weight decay
  0.01 (BatchNorm excluded), peak lr 0.002 at batch 4096, cosine decay, 1560 linear warmup steps (= 5 epochs at
  4096), EMA 0.9999, label smoothing 0.1, dropout 0.3, RandAugment magnitude 9, no gradient clipping.
Everything below is that recipe, with timm's epoch count (2400) in place of TF's ~9600.
"""
import ml_collections

from flax_mobilenet.training.defaults import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.model.update(name="mobilenetv4_conv_small", num_classes=1000, dropout=0.3)  # TF: dropout_rate 0.3
    config.dataset = "imagenet2012"
    config.image_size = 224  # timm tag r224; TF input_size [224, 224, 3]
    config.batch_size = 4096  # TF: global_batch_size 4096
    config.num_epochs = 2400  # timm tag e2400
    config.optimizer.update(name="adamw", b1=0.6, b2=0.999, eps=1e-6)  # TF: adamw beta_1 0.6, epsilon 1e-6
    config.learning_rate = 0.002  # TF: initial_learning_rate 0.002 ...
    config.base_batch_size = 4096  # ... at batch 4096
    config.lr_schedule.update(name="cosine", warmup_epochs=5.0)  # TF: cosine, 1560 warmup steps x 4096 / 1.28M
    config.weight_decay = 0.01  # TF: weight_decay_rate 0.01 (decoupled, scaled by the lr as optax.adamw)
    config.weight_decay_skip_bn_bias = True  # TF: exclude_from_weight_decay ['batch_normalization']
    config.label_smoothing = 0.1  # TF: label_smoothing 0.1
    config.ema_decay = 0.9999  # TF: ema average_decay 0.9999
    config.augment.update(policy="randaugment", randaugment_num_ops=2, randaugment_magnitude=9)  # TF: randaug m9
    config.grad_clip_norm = 0.0  # TF: gradient_clip_norm 0.0
    return config
