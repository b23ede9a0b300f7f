"""Two-stage Deformable-DETR-R50 with box refinement, 50 epochs (configs/deformable_detr_r50_50ep.py) with
DEIM's Dense O2O and MAL (configs/common/deim.py): Mosaic on half the samples and MixUp on half the batches
in epochs [2, 27) (DEIM-RT-DETRv2-R18's stages [4, 64) of 120 epochs, scaled to 50), MAL (gamma 1.5, weight
1) in place of the focal loss. The step LR stays; DEIM's flat-cosine schedule is the switch
``lr_multiplier=${deim_lr_multiplier}`` (flat for 27 epochs, constant for the last one)."""
from ..common.deim import apply_to_detr
from ..common.deim import lr_multiplier as deim_lr_multiplier
from ..deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

apply_to_detr(model, dataloader, deim_lr_multiplier, policy=[2, 27, 50], flat_epochs=27, no_aug_epochs=1)
train.output_dir = "./output/ablations/deformable_detr_r50_deim"
