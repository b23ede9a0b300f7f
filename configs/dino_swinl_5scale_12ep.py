"""DINO-5scale, Swin-L (384, ImageNet-22k), 12 epochs on COCO: official IDEA-Research/DINO
config/DINO/DINO_4scale_swin.py with return_interm_indices=[0,1,2,3] num_feature_levels=5 (the
README's 5-scale Swin-L) with --options epochs=12 lr_drop=11. README: 57.3 box AP."""
from .common.data.coco_detr import dataloader
from .common.dino import dino_schedule, five_scale, swin_large
from .common.models.dino import model
from .common.optim import DinoAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

swin_large(model, out_indices=[0, 1, 2, 3])
five_scale(model, dataloader, in_channels=model.encoder.in_channels)
dino_schedule(train, lr_multiplier, epochs=12, output_dir="./output/dino_swinl_5scale_12ep")
