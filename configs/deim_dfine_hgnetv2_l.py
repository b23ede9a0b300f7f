"""DEIM-D-FINE-L: D-FINE-L (configs/dfine_hgnetv2_l.py) trained with DEIM's recipe for 58 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_l_coco.yml). README: 54.7 AP, 31M parameters, 91 GFLOPs.

    python train_net.py --config-file configs/deim_dfine_hgnetv2_l.py

Stages (epochs): [0, 4) no augmentation, [4, 29) Dense O2O (Mosaic and MixUp at 0.5), [29, 50)
RT-DETR augmentations, [50, 58) none; multi-scale until 50, where the best state of the first 50
epochs is reloaded. Flat-cosine LR: flat until 29, cosine down to half until 50, then constant.
See configs/common/deim.py for the recipe and its ablations.
"""
from .common.deim import apply_to_dfine, lr_multiplier
from .dfine_hgnetv2_l import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
dataloader.train.mapper.policy_epoch = [4, 29, 50]
dataloader.train.update(mixup_epochs=[4, 29], multi_scale_stop_epoch=50)

train.output_dir = "./output/deim_dfine_hgnetv2_l"
train.epochs = 58
train.stage_switch.epoch = 50
lr_multiplier.update(flat_epochs=29, no_aug_epochs=8)

optimizer.lr = 5e-4
optimizer.params.rules[0]["lr"] = 2.5e-5
