"""DEIM-RT-DETRv2-M: PResNet-34vd, 120 epochs with DEIM's recipe (official DEIM
configs/deim_rtdetrv2/deim_r34vd_120e_coco.yml). README: 50.9 AP, 31M parameters."""
from dfine.data import generate_scales

from .deim_rtdetrv2_r18 import dataloader, lr_multiplier, model, optimizer, train

# The RT-DETRv2-M architecture (configs/rtdetrv2_r34.py).
model.backbone.depth = 34
model.decoder.num_layers = 4

train.output_dir = "./output/deim_rtdetrv2_r34"
dataloader.train.multi_scale = generate_scales(640, 3)

optimizer.params.rules = [
    {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-4},
    {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
