"""Quick start: a small DINO (ResNet-18, 128-d deformable encoder and decoder, 100 queries) trained
from scratch on the bundled toy shapes data set on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/dino_r18_toy.py

configs/dino_r50_4scale_12ep.py with DINO's parts and recipe (mixed query selection, contrastive
denoising, look-forward-twice, focal loss, the DETR augmentation with aspect-ratio resizes and crops
in padded batches, AdamW, one LR drop), narrowed and shortened for 2 CPU cores
(configs/common/quickstart.py::detr_r18_toy): 4 epochs of batch 8 (400 iterations) with the LR
drop after epoch 3, 50 denoising queries.
"""
from ..common.quickstart import detr_r18_toy
from ..dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier, "./output/quickstart_dino_r18_toy", epochs=4)
