"""Every registered name's eval preprocessing is the one its reference weights were evaluated with."""
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from torch_reference import timm, torch, tv_models

import flax_mobilenet as fm
from flax_mobilenet.preprocessing import preprocess_for
from flax_mobilenet.registry import model_entry

from timm.data import create_transform, resolve_data_config

# classification transforms; the segmentation models' (no crop) are checked in test_segmentation.py
TORCHVISION = [n for n in fm.list_models() if model_entry(n).source == "torchvision" and fm.weights_info(n).center_crop]
TIMM = [n for n in fm.list_models() if model_entry(n).source == "timm"]


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(skimage_data.chelsea())


def torchvision_transform(name):
    """The transforms() of the torchvision weights our WeightsInfo names ('torchvision Enum.MEMBER')."""
    enum_name, member = fm.weights_info(name).reference.split()[1].split(".")
    return getattr(tv_models, enum_name)[member].transforms()


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_names_use_their_weights_transform(name, photo):
    weights, transform = fm.weights_info(name), torchvision_transform(name)
    assert [weights.resize_size] == transform.resize_size and [weights.crop_size] == transform.crop_size
    assert weights.interpolation == transform.interpolation.value
    assert weights.mean == tuple(transform.mean) and weights.std == tuple(transform.std)
    expected = transform(photo).numpy().transpose(1, 2, 0)  # on the PIL image, as torchvision evaluates
    assert np.abs(preprocess_for(photo, weights) - expected).max() < 1e-5


@pytest.mark.parametrize("name", TIMM)
def test_timm_names_use_their_pretrained_cfg(name, photo):
    weights = fm.weights_info(name)
    tagged = weights.reference.split()[1]  # 'timm NAME.TAG': the weights our facts were read from
    assert tagged.split(".")[0] in (name, "mobilenetv1_100")  # mobilenet_v1 is our alias of timm's name
    pretrained = timm.models.get_pretrained_cfg(tagged)
    assert pretrained.tag == tagged.split(".")[1]
    assert timm.models.get_pretrained_cfg(tagged.split(".")[0]).tag == pretrained.tag  # timm's default weights
    config = resolve_data_config(pretrained_cfg=pretrained.to_dict())
    assert config["input_size"] == (3, weights.crop_size, weights.crop_size)
    assert (config["interpolation"], config["mean"], config["std"]) == (weights.interpolation, weights.mean,
                                                                        weights.std)
    expected = create_transform(**config)(photo).numpy().transpose(1, 2, 0)
    assert np.abs(preprocess_for(photo, weights) - expected).max() < 1e-5


def test_other_sizes_keep_the_ratio():
    weights = fm.weights_info("mobilenet_v3_large")
    assert (weights.resize_size, weights.crop_size) == (232, 224)
    assert (weights.at_size(448).resize_size, weights.at_size(448).crop_size) == (464, 448)
    with pytest.raises(ValueError, match="unknown model"):
        fm.weights_info("mobilenet_v9")
