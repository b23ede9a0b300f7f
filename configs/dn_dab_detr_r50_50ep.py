"""DN-DETR-R50 (``-m dn_dab_detr --use_dn --epochs 50 --lr_drop 40``). README: 44.4 box AP (paper: 44.1).

Official IDEA-Research/DN-DETR, model ``models/DN_DAB_DETR``, the main.py defaults otherwise."""
from .common.data.coco_detr import dataloader
from .common.dn_dab_detr import dn_dab_detr_schedule
from .common.models.dn_dab_detr import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

dn_dab_detr_schedule(train, lr_multiplier, epochs=50, output_dir="./output/dn_dab_detr_r50_50ep")
