"""Two-stage Deformable-DETR-R50 with box refinement, 50 epochs (configs/deformable_detr_r50_50ep.py) with
D-FINE's FDR + GO-LSD (configs/common/dfine.py): distribution box heads (one per layer), FGL on every
layer, DDF from the last layer, L1 and GIoU on the first layer's initial boxes too; every token's
proposal keeps its own matches. Everything else is Deformable-DETR's."""
from ..common.dfine import use_fdr_golsd
from ..deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/deformable_detr_r50_fdr_golsd"
