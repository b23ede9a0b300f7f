"""DEIM-D-FINE-N: D-FINE-N (configs/dfine_hgnetv2_n.py) trained with DEIM's recipe for 160 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_n_coco.yml). README: 43.0 AP, 4M parameters, 7 GFLOPs.

Stages (epochs): [0, 4) none, [4, 78) Dense O2O, [78, 148) RT-DETR augmentations, [148, 160) none;
single-scale. The LR stays flat after the warm-up (flat epochs 7800, lr_gamma 1, as officially).
"""
from .common.deim import apply_to_dfine, lr_multiplier, set_stages
from .dfine_hgnetv2_n import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
set_stages(dataloader, train, lr_multiplier, epochs=160, policy=[4, 78, 148], flat_epochs=7800,
           no_aug_epochs=12)
lr_multiplier.lr_gamma = 1.0
train.output_dir = "./output/deim_dfine_hgnetv2_n"
