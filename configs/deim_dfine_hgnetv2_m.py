"""DEIM-D-FINE-M: D-FINE-M (configs/dfine_hgnetv2_m.py) trained with DEIM's recipe for 102 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_m_coco.yml). README: 52.7 AP, 19M parameters, 57 GFLOPs.

Stages (epochs): [0, 4) none, [4, 49) Dense O2O, [49, 90) RT-DETR augmentations, [90, 102) none;
flat LR until 49, cosine until 90.
"""
from .common.deim import apply_to_dfine, lr_multiplier, set_stages
from .dfine_hgnetv2_m import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
set_stages(dataloader, train, lr_multiplier, epochs=102, policy=[4, 49, 90], flat_epochs=49,
           no_aug_epochs=12)
train.output_dir = "./output/deim_dfine_hgnetv2_m"

# The backbone without its BatchNorms at 4e-5; no weight decay on any norm.
optimizer.lr = 4e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*bn).*$", "lr": 4e-5},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
