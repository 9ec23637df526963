"""mobilenet_v3_small: the model section (the training recipe is added with train.py)."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        name="mobilenet_v3_small",
        num_classes=1000,
        width_mult=1.0,
        reduced_tail=False,
        dilated=False,
        dropout=0.2,
    ))
    return config
