"""DINO-4scale, Swin-L (384, ImageNet-22k), 36 epochs on COCO: official IDEA-Research/DINO
config/DINO/DINO_4scale_swin.py with --options epochs=36 lr_drop=33. README: 58.0 box AP."""
from .common.data.coco_detr import dataloader
from .common.dino import dino_schedule, swin_large
from .common.models.dino import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

swin_large(model, out_indices=[1, 2, 3])
dino_schedule(train, lr_multiplier, epochs=36, output_dir="./output/dino_swinl_4scale_36ep")
