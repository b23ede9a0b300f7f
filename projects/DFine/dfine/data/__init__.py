"""Data: dataset registration (COCO json, YOLO folders) and loading with checks (validation), RT-DETR
and DETR/DINO augmentations, DEIM Dense O2O (Mosaic, MixUp, DEIMv2's CopyBlend), epoch-aware mapper and loaders.

Importing this package registers the generated toy data set as ``toy_shapes_train`` and
``toy_shapes_val`` (files are generated on first load).
"""
from .datasets import load_dataset_dicts, register_coco_dataset, remove_degenerate_boxes
from .dense_o2o import CopyBlend, MixUp, Mosaic
from .loader import (
    BatchCollate,
    DetectionDataset,
    EpochAwareSampler,
    TrainLoader,
    build_test_loader,
    build_train_loader,
    generate_scales,
)
from .mapper import DetrDatasetMapper, policy_for_epoch
from .toy_shapes import TOY_SHAPES_CLASSES, prepare_toy_shapes, register_toy_shapes
from .transforms import (
    DetrRandomFlip,
    DetrRandomResize,
    RandomIoUCrop,
    RandomPhotometricDistort,
    RandomZoomOut,
    RandomSelect,
    RandomSizeCrop,
    SanitizeBoxes,
    detr_test_augmentations,
    detr_train_augmentations,
    rtdetr_train_augmentations,
)
from .validation import DatasetError, check_coco_json, check_dataset_dicts
from .yolo import export_yolo_dataset, register_yolo_dataset

register_toy_shapes()

__all__ = [
    "load_dataset_dicts",
    "register_coco_dataset",
    "register_yolo_dataset",
    "export_yolo_dataset",
    "remove_degenerate_boxes",
    "DatasetError",
    "check_coco_json",
    "check_dataset_dicts",
    "DetectionDataset",
    "EpochAwareSampler",
    "TrainLoader",
    "BatchCollate",
    "generate_scales",
    "MixUp",
    "CopyBlend",
    "Mosaic",
    "policy_for_epoch",
    "build_test_loader",
    "build_train_loader",
    "DetrDatasetMapper",
    "TOY_SHAPES_CLASSES",
    "prepare_toy_shapes",
    "register_toy_shapes",
    "RandomIoUCrop",
    "RandomPhotometricDistort",
    "RandomZoomOut",
    "SanitizeBoxes",
    "rtdetr_train_augmentations",
    "DetrRandomFlip",
    "DetrRandomResize",
    "RandomSelect",
    "RandomSizeCrop",
    "detr_train_augmentations",
    "detr_test_augmentations",
]
