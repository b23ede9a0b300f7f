"""COCO 2017 with the DETR/DINO data pipeline (IDEA-Research/DINO ``datasets/coco.py::make_coco_transforms``,
``datasets/transforms.py``, with the values of ``config/DINO/coco_transformer.py``).

Training: flip with p=0.5, then with p=0.5 either a resize of the shorter side to one of ``scales``
(longer side <= 1333), or a resize to 400/500/600, a random crop of sides in [384, 600] and the same
resize; images keep their aspect ratio and differ in size within a batch (the model pads them
bottom/right and masks the padding), so there is no batch multi-scale (``multi_scale=None``).
Evaluation: shorter side 800, longer side <= 1333. ``min_box_size=0, min_box_area=0``: the official
keep rule (positive width and height after the crop), where the RT-DETR default of 1 pixel would
drop slivers the official keeps. Images without annotations stay in the training set, as in the official
``CocoDetection`` (``load_dataset_dicts``' default). The model normalises the pixels (ImageNet mean/std, as the
official ``Normalize``), so the mapper returns uint8 images and absolute XYXY boxes.

Batch: 16 in total, the official 2 per GPU on 8 GPUs (``config/DINO/DINO_4scale.py``). Workers: 4 per
process (the official ``main.py`` default is 10); they change the speed only, not the batches.

Detectron2 registers ``coco_2017_train``/``coco_2017_val`` under ``$DETECTRON2_DATASETS``
(default ``./datasets``): ``coco/train2017``, ``coco/val2017``, ``coco/annotations/``.
"""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from dfine.data import (
    DetrDatasetMapper,
    build_test_loader,
    build_train_loader,
    detr_test_augmentations,
    detr_train_augmentations,
    load_dataset_dicts,
)

dataloader = OmegaConf.create()

dataloader.train = L(build_train_loader)(
    dataset=L(load_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DetrDatasetMapper)(
        is_train=True,
        image_size=None,
        augmentations=L(detr_train_augmentations)(
            scales=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
            max_size=1333,
            crop_resize_scales=[400, 500, 600],
            crop_size=[384, 600],
        ),
        image_format="RGB",
        min_box_size=0,
        min_box_area=0,
    ),
    total_batch_size=16,
    num_workers=4,
    multi_scale=None,
    multi_scale_stop_epoch=None,
)
dataloader.test = L(build_test_loader)(
    dataset=L(load_dataset_dicts)(names="coco_2017_val"),
    mapper=L(DetrDatasetMapper)(
        is_train=False,
        image_size=None,
        augmentations=L(detr_test_augmentations)(size=800, max_size=1333),
        image_format="RGB",
    ),
    num_workers=4,
)
# use_fast_impl=False: the pure-Python detectron2 0.6 install has no compiled COCOeval.
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False)
