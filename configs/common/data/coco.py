"""COCO 2017 with the RT-DETRv2 training pipeline (configs/rtdetrv2/include/dataloader.yml).

Detectron2 registers ``coco_2017_train``/``coco_2017_val`` under ``$DETECTRON2_DATASETS``
(default ``./datasets``): ``coco/train2017``, ``coco/val2017``, ``coco/annotations/``.
"""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from dfine.data import DetrDatasetMapper, build_test_loader, build_train_loader, load_dataset_dicts

dataloader = OmegaConf.create()

dataloader.train = L(build_train_loader)(
    dataset=L(load_dataset_dicts)(names="coco_2017_train"),
    # RandomPhotometricDistort(p=0.5), RandomZoomOut(fill=0), RandomIoUCrop(p=0.8), sanitise, flip,
    # then Resize(640x640) and sanitise; the first three stop at `policy_epoch`.
    mapper=L(DetrDatasetMapper)(is_train=True, image_size=640, policy_epoch=None, image_format="RGB", min_box_size=1),
    total_batch_size=16,
    num_workers=4,
    multi_scale=[480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800],
    multi_scale_stop_epoch=None,
)
dataloader.test = L(build_test_loader)(
    dataset=L(load_dataset_dicts)(names="coco_2017_val"),
    mapper=L(DetrDatasetMapper)(is_train=False, image_size=640, image_format="RGB"),
    num_workers=4,
)
# use_fast_impl=False: the pure-Python detectron2 0.6 install has no compiled COCOeval.
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False)
