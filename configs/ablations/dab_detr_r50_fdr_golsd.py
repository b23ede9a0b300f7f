"""DAB-DETR-R50, 50 epochs (configs/dab_detr_r50_50ep.py) with D-FINE's FDR + GO-LSD
(configs/common/dfine.py): distribution box head, FGL on every layer, DDF from the last layer, L1 and
GIoU on the first layer's initial boxes too. Everything else is DAB-DETR's."""
from ..common.dfine import use_fdr_golsd
from ..dab_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/dab_detr_r50_fdr_golsd"
