"""DINO-5scale, ResNet-50, 36 epochs on COCO: official IDEA-Research/DINO config/DINO/DINO_5scale.py
with --options epochs=36 lr_drop=33. README: 51.2 box AP."""
from .common.data.coco_detr import dataloader
from .common.dino import dino_schedule, five_scale
from .common.models.dino import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

model.backbone.return_idx = [0, 1, 2, 3]
five_scale(model, dataloader, in_channels=[256, 512, 1024, 2048])
dino_schedule(train, lr_multiplier, epochs=36, output_dir="./output/dino_r50_5scale_36ep")
