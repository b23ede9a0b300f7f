"""DN-DAB-DETR-R50-DC5 with 3 patterns, 12 epochs (``-m dn_dab_detr --use_dn --dilation --num_patterns 3``).
README: 41.7 box AP.

Official IDEA-Research/DN-DETR, model ``models/DN_DAB_DETR``, the main.py defaults otherwise."""
from .common.data.coco_detr import dataloader
from .common.dn_dab_detr import dn_dab_detr_schedule, dc5, three_patterns
from .common.models.dn_dab_detr import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

dc5(model)
three_patterns(model)
dn_dab_detr_schedule(train, lr_multiplier, epochs=12, output_dir="./output/dn_dab_detr_r50_dc5_3pat_12ep")
