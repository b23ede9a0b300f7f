"""DINO-4scale, ResNet-50, 36 epochs on COCO: official IDEA-Research/DINO config/DINO/DINO_4scale.py
with --options epochs=36 lr_drop=33. README: 50.9 box AP."""
from .common.data.coco_detr import dataloader
from .common.dino import dino_schedule
from .common.models.dino import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

dino_schedule(train, lr_multiplier, epochs=36, output_dir="./output/dino_r50_4scale_36ep")
