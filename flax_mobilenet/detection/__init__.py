"""SSD detection primitives in pure JAX with static shapes, exact to torchvision's SSD/SSDLite:
default boxes, box coding, class-aware NMS, detection post-processing, target matching and the loss."""
from .anchors import (SSDLITE_ASPECT_RATIOS, SSDLITE_MAX_RATIO, SSDLITE_MIN_RATIO, default_box_scales, default_boxes,
                      num_anchors_per_location, ssdlite_anchors, ssdlite_feature_sizes)
from .box_coder import BBOX_XFORM_CLIP, SSD_BOX_WEIGHTS, decode, encode
from .boxes import box_area, box_iou, clip_boxes_to_image, resize_boxes
from .loss import smooth_l1, ssd_loss
from .matching import match_anchors
from .nms import NMSResult, batched_nms
from .postprocess import Detections, postprocess, rescale_detections

__all__ = [
    "BBOX_XFORM_CLIP", "Detections", "NMSResult", "SSDLITE_ASPECT_RATIOS", "SSDLITE_MAX_RATIO", "SSDLITE_MIN_RATIO",
    "SSD_BOX_WEIGHTS", "batched_nms", "box_area", "box_iou", "clip_boxes_to_image", "decode", "default_box_scales",
    "default_boxes", "encode", "match_anchors", "num_anchors_per_location", "postprocess", "rescale_detections",
    "resize_boxes", "smooth_l1", "ssd_loss", "ssdlite_anchors", "ssdlite_feature_sizes",
]
