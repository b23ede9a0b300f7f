"""The bundled toy data set (generated on first use into ~/.cache/dfine/datasets, or $DFINE_DATASETS):
six classes of shapes on textured 256x256 images, 800 train / 200 val, with the pipeline of
coco.py at the images' own size, single-scale, and two loader workers."""
from .coco import dataloader

dataloader.train.dataset.names = "toy_shapes_train"
dataloader.train.mapper.image_size = 256
dataloader.train.num_workers = 2
dataloader.train.multi_scale = None
dataloader.test.dataset.names = "toy_shapes_val"
dataloader.test.mapper.image_size = 256
dataloader.test.num_workers = 2
