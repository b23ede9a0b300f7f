"""DEIM-D-FINE-N: D-FINE-N (configs/dfine_hgnetv2_n.py) trained with DEIM's recipe for 160 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_n_coco.yml). README: 43.0 AP, 4M parameters, 7 GFLOPs.

Stages (epochs): [0, 4) none, [4, 78) Dense O2O, [78, 148) RT-DETR augmentations, [148, 160) none;
single-scale. The LR stays flat after the warm-up (flat epochs 7800, lr_gamma 1, as officially).
"""
from .common.deim import apply_to_dfine, lr_multiplier
from .dfine_hgnetv2_n import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
dataloader.train.mapper.policy_epoch = [4, 78, 148]
dataloader.train.update(mixup_epochs=[4, 78], multi_scale_stop_epoch=148)

train.output_dir = "./output/deim_dfine_hgnetv2_n"
train.epochs = 160
train.stage_switch.epoch = 148
lr_multiplier.update(flat_epochs=7800, no_aug_epochs=12, lr_gamma=1.0)
