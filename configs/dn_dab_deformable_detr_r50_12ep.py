"""DN-DAB-Deformable-DETR, ResNet-50, 12 epochs on COCO: the official IDEA-Research/DN-DETR
``main.py -m dn_dab_deformable_detr --transformer_activation relu --use_dn --epochs 12``.
The README gives no 12-epoch result or command for this model: ``--lr_drop 11`` here (``--drop_lr_now``,
"for 12epoch setting", drops the LR for the last epoch)."""
from .common.dab_deformable_detr import dab_deformable_schedule, with_denoising
from .common.data.coco_detr import dataloader
from .common.models.dab_deformable_detr import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

with_denoising(model)
dab_deformable_schedule(train, lr_multiplier, epochs=12, output_dir="./output/dn_dab_deformable_detr_r50_12ep")
