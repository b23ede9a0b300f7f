"""The toy base configs/quickstart/dn_dab_deformable_detr_r18_toy.py with DEIM's Dense O2O and MAL
(configs/common/deim.py), as configs/ablations/*_deim.py on the R50 bases: Mosaic (tiles of 64 pixels,
half the training scale as 320 is on COCO) on half the samples and MixUp on half the batches in epochs
[1, 3) of 4, MAL in place of the focal loss; the step LR stays. DAB-Deformable-DETR:
``model.decoder.denoising=null``."""
from ...common.deim import apply_to_detr
from ...common.deim import lr_multiplier as deim_lr_multiplier
from ...quickstart.dn_dab_deformable_detr_r18_toy import dataloader, lr_multiplier, model, optimizer, train

apply_to_detr(model, dataloader, deim_lr_multiplier, policy=[1, 3, 4], flat_epochs=2, no_aug_epochs=1)
dataloader.train.mapper.mosaic.output_size = 64
train.output_dir = "./output/ablations/toy/dn_dab_deformable_detr_r18_deim"
