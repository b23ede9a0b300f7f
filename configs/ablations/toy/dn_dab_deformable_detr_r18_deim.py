"""configs/quickstart/dn_dab_deformable_detr_r18_toy.py (the toy base: dn_dab_deformable_detr_r50_12ep.py narrowed by
configs/common/quickstart.py::detr_r18_toy) with Dense O2O + MAL (configs/common/deim.py::apply_to_detr):
Mosaic and MixUp in epochs [1, 3) of 4, tiles of 64 pixels. DAB-Deformable-DETR:
``model.decoder.denoising=null``."""
from ...common.deim import apply_to_detr
from ...common.deim import lr_multiplier as deim_lr_multiplier
from ...common.quickstart import detr_r18_toy
from ...dn_dab_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier,
             "./output/ablations/toy/dn_dab_deformable_detr_r18_deim", epochs=4)
apply_to_detr(model, dataloader, deim_lr_multiplier, policy=[1, 3, 4], flat_epochs=2, no_aug_epochs=1,
              mosaic_size=64)
