"""DEIM-RT-DETRv2-X: PResNet-101vd, hidden 384 encoder, 60 epochs with DEIM's recipe (official
DEIM configs/deim_rtdetrv2/deim_r101vd_60e_coco.yml). README: 55.5 AP, 76M parameters."""
from .deim_rtdetrv2_r50 import dataloader, lr_multiplier, model, optimizer, train

# The RT-DETRv2-X architecture (configs/rtdetrv2_r101.py).
model.backbone.depth = 101
model.encoder.hidden_dim = 384
model.encoder.dim_feedforward = 2048
model.decoder.feat_channels = [384, 384, 384]

train.output_dir = "./output/deim_rtdetrv2_r101"
optimizer.params.rules = [
    {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 2e-6},
    {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
