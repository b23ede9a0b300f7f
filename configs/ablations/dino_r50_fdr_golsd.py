"""DINO-4scale-R50, 12 epochs (configs/dino_r50_4scale_12ep.py) with D-FINE's FDR + GO-LSD
(configs/common/dfine.py): distribution box head, FGL on every layer and the denoising queries, DDF
from the last layer, L1 and GIoU on the first layer's initial boxes too. Everything else is DINO's."""
from ..common.dfine import use_fdr_golsd
from ..dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/dino_r50_fdr_golsd"
