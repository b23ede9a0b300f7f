"""DINO-4scale-R50, 12 epochs (configs/dino_r50_4scale_12ep.py) with DEIM's Dense O2O and MAL
(configs/common/deim.py): Mosaic on half the samples and MixUp on half the batches in epochs [1, 6)
(DEIM-RT-DETRv2-R18's stages [4, 64) of 120 epochs, scaled to 12), MAL (gamma 1.5, weight 1) in place of
the focal loss. DINO's step LR stays; DEIM's flat-cosine schedule is the switch
``lr_multiplier=${deim_lr_multiplier}`` (flat for 6 epochs, constant for the last one)."""
from ..common.deim import apply_to_detr
from ..common.deim import lr_multiplier as deim_lr_multiplier
from ..dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

apply_to_detr(model, dataloader, deim_lr_multiplier, policy=[1, 6, 12], flat_epochs=6, no_aug_epochs=1)
train.output_dir = "./output/ablations/dino_r50_deim"
