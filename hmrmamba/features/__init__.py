"""Per-frame image features: an in-project ResNet-50, person crops and batched extraction."""

from hmrmamba.features.crops import bbox_from_keypoints, crop_and_resize, keypoints_to_crop, smooth_boxes
from hmrmamba.features.extract import extract_features, iter_features, prepare_model
from hmrmamba.features.resnet import FEATURE_DIM, ResNet50, resnet50_conv_macs
from hmrmamba.features.sequences import extract_from_sources, scale_boxes, sequence_boxes
from hmrmamba.features.weights import LoadReport, load_backbone_weights

__all__ = [
    "FEATURE_DIM", "LoadReport", "ResNet50", "bbox_from_keypoints", "crop_and_resize", "extract_features",
    "extract_from_sources", "iter_features", "keypoints_to_crop", "load_backbone_weights", "prepare_model",
    "resnet50_conv_macs", "scale_boxes", "sequence_boxes", "smooth_boxes",
]
