"""Quick start: a small DN-DAB-Deformable-DETR (ResNet-18, 128-d deformable encoder and decoder, 100
anchor queries, DN-DETR's 5 denoising groups) trained from scratch on the bundled toy shapes data set
on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/dn_dab_deformable_detr_r18_toy.py

configs/dn_dab_deformable_detr_r50_50ep.py with its parts and recipe (learned 4-D anchors refined
layer by layer, DN-DETR's label and box denoising, focal loss, the DETR augmentation in padded
batches, AdamW, one LR drop), narrowed and shortened for 2 CPU cores as the DINO quick start
(configs/common/quickstart.py::detr_r18_toy): 4 epochs of batch 8 (400 iterations) with the
LR drop after epoch 3.

The same model without denoising (DAB-Deformable-DETR) is one override away:
``model.decoder.denoising=null``.
"""
from ..common.quickstart import detr_r18_toy
from ..dn_dab_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(
    model, dataloader, train, optimizer, lr_multiplier, "./output/quickstart_dn_dab_deformable_detr_r18_toy", epochs=4
)
