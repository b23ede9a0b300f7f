"""DEIM-RT-DETRv2-S: PResNet-18vd, 120 epochs with DEIM's recipe (official DEIM
configs/deim_rtdetrv2/deim_r18vd_120e_coco.yml). README: 49.0 AP, 20M parameters.

Single-scale, as the official RT-DETRv2-S: the official DEIM file asks for that with
`collate_fn.scales: ~`, which its collate function rejects (the file crashes as shipped).
"""
from .common.deim import set_stages
from .deim_rtdetrv2_r50 import dataloader, lr_multiplier, model, optimizer, train

# The RT-DETRv2-S architecture (configs/rtdetrv2_r18.py).
model.backbone.depth = 18
model.encoder.in_channels = [128, 256, 512]
model.encoder.expansion = 0.5
model.decoder.num_layers = 3

train.output_dir = "./output/deim_rtdetrv2_r18"
set_stages(dataloader, train, lr_multiplier, epochs=120, policy=[4, 64, 117], flat_epochs=64, no_aug_epochs=3)
dataloader.train.multi_scale = None

# The whole backbone at the base LR; no weight decay on any norm.
optimizer.params.rules = [{"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0}]
