"""DAB-DETR-R50, 50 epochs: the DN-DETR R50 model and recipe (``configs/dn_dab_detr_r50_50ep.py``) trained
without denoising queries.

The matching queries keep DN-DETR's content (the "no class" label embedding plus an indicator 0), so the
model and its parameters (43,694,977 with 91 classes) are DN-DETR's. The official DN-DETR code cannot train
without ``--use_dn`` (its forward unpacks the denoising arguments); the original DAB-DETR is another
repository (IDEA-Research/DAB-DETR), not available to this port, whose README gives DAB-DETR-R50 42.2 box AP
at 50 epochs (as recalled, not checked against that README here; the DN-DETR paper's Table 1 baseline).
"""
from .common.data.coco_detr import dataloader
from .common.dn_dab_detr import dn_dab_detr_schedule, without_denoising
from .common.models.dn_dab_detr import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

without_denoising(model)
dn_dab_detr_schedule(train, lr_multiplier, epochs=50, output_dir="./output/dab_detr_r50_50ep")
