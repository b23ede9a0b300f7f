"""DEIM-D-FINE-S: D-FINE-S (configs/dfine_hgnetv2_s.py) trained with DEIM's recipe for 132 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_s_coco.yml). README: 49.0 AP, 10M parameters, 25 GFLOPs.

Stages (epochs): [0, 4) none, [4, 64) Dense O2O, [64, 120) RT-DETR augmentations, [120, 132) none;
flat LR until 64, cosine until 120.
"""
from .common.deim import apply_to_dfine, lr_multiplier, set_stages
from .dfine_hgnetv2_s import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
set_stages(dataloader, train, lr_multiplier, epochs=132, policy=[4, 64, 120], flat_epochs=64,
           no_aug_epochs=12)
train.output_dir = "./output/deim_dfine_hgnetv2_s"

# The backbone without its BatchNorms at 2e-4; no weight decay on any norm.
optimizer.lr = 4e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*bn).*$", "lr": 2e-4},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
