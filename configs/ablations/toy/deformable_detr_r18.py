"""Toy base of the ablation tables (README, "FDR + GO-LSD and DEIM on the DETR lineage"): the two-stage
Deformable-DETR with box refinement of configs/deformable_detr_r50_50ep.py, narrowed for the bundled toy
set as the quick starts (configs/common/quickstart.py::detr_r18_toy): ResNet-18, 1 encoder and 3
decoder layers of width 128, 100 queries, 4 epochs of batch 8 (400 iterations) with the LR drop after
epoch 3. The sampling offsets keep Deformable-DETR's 0.1 x LR."""
from ...common.quickstart import detr_r18_toy
from ...deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier, "./output/ablations/toy/deformable_detr_r18", epochs=4)
