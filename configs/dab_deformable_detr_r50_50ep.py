"""DAB-Deformable-DETR, ResNet-50, 50 epochs on COCO: the official IDEA-Research/DN-DETR
``main.py -m dn_dab_deformable_detr --transformer_activation relu --epochs 50 --lr_drop 40`` without
``--use_dn`` (no denoising). The DN-DETR README gives no AP for it: it reports the model with
denoising (49.5 box AP at 50 epochs, configs/dn_dab_deformable_detr_r50_50ep.py) and says that its
48.4 AP at 24 epochs is "comparable to the 50-epoch DAB-Deformable-DETR"."""
from .common.dab_deformable_detr import dab_deformable_schedule
from .common.data.coco_detr import dataloader
from .common.models.dab_deformable_detr import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

dab_deformable_schedule(train, lr_multiplier, epochs=50, output_dir="./output/dab_deformable_detr_r50_50ep")
