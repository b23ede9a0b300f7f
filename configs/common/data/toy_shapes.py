"""The bundled toy data set (generated on first use into ~/.cache/dfine/datasets, or $DFINE_DATASETS):
six classes of shapes on textured 256x256 images, 800 train / 200 val."""
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from dfine.data import DetrDatasetMapper, build_test_loader, build_train_loader, load_dataset_dicts

dataloader = OmegaConf.create()
dataloader.train = L(build_train_loader)(
    dataset=L(load_dataset_dicts)(names="toy_shapes_train"),
    mapper=L(DetrDatasetMapper)(is_train=True, image_size=256, policy_epoch=None, image_format="RGB", min_box_size=1),
    total_batch_size=16,
    num_workers=2,
    multi_scale=None,
    multi_scale_stop_epoch=None,
)
dataloader.test = L(build_test_loader)(
    dataset=L(load_dataset_dicts)(names="toy_shapes_val"),
    mapper=L(DetrDatasetMapper)(is_train=False, image_size=256, image_format="RGB"),
    num_workers=2,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", use_fast_impl=False)
