"""Toy base of the ablation tables (README, "FDR + GO-LSD and DEIM on the DETR lineage"): DN-DETR
(DN-DAB-DETR, configs/dn_dab_detr_r50_50ep.py, global attention) narrowed for the bundled toy set as the
quick starts (configs/common/quickstart.py::detr_r18_toy): ResNet-18, 1 encoder and 3 decoder layers of
width 128, 100 anchors, 4 epochs of batch 8 (400 iterations) with the LR drop after epoch 3. The map is
ResNet-18's C4 (stride 16, 8x8 for a 128-pixel image), the stride of the DC5 models (ResNet-18 cannot
dilate), instead of C5's 4x4.

DAB-DETR is the same model without denoising: ``model.decoder.denoising=null``."""
from ...common.quickstart import detr_r18_toy
from ...dn_dab_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier, "./output/ablations/toy/dn_detr_r18", epochs=4)
model.backbone.return_idx = [2]
model.encoder.update(in_channels=[256], feat_strides=[16])
