"""DN-DAB-Deformable-DETR, ResNet-50, 50 epochs on COCO: the official IDEA-Research/DN-DETR
``main.py -m dn_dab_deformable_detr --transformer_activation relu --use_dn --epochs 50``.
README: 49.5 box AP."""
from .common.dab_deformable_detr import dab_deformable_schedule, with_denoising
from .common.data.coco_detr import dataloader
from .common.models.dab_deformable_detr import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

with_denoising(model)
dab_deformable_schedule(train, lr_multiplier, epochs=50, output_dir="./output/dn_dab_deformable_detr_r50_50ep")
