"""DEIM-D-FINE-L: D-FINE-L (configs/dfine_hgnetv2_l.py) trained with DEIM's recipe for 58 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_l_coco.yml). README: 54.7 AP, 31M parameters, 91 GFLOPs.

    python train_net.py --config-file configs/deim_dfine_hgnetv2_l.py

Stages (epochs): [0, 4) no augmentation, [4, 29) Dense O2O (Mosaic and MixUp at 0.5), [29, 50)
RT-DETR augmentations, [50, 58) none; multi-scale until 50, where the best state of the first 50
epochs is reloaded. Flat-cosine LR: flat until 29, cosine down to half until 50, then constant.
See configs/common/deim.py for the recipe and its ablations.
"""
from .common.deim import apply_to_dfine, lr_multiplier, set_stages
from .dfine_hgnetv2_l import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
set_stages(dataloader, train, lr_multiplier, epochs=58, policy=[4, 29, 50], flat_epochs=29,
           no_aug_epochs=8)
train.output_dir = "./output/deim_dfine_hgnetv2_l"

optimizer.lr = 5e-4
optimizer.params.rules.backbone.lr = 2.5e-5
