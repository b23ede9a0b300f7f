"""The toy base configs/ablations/toy/dn_detr_r18.py with D-FINE's FDR + GO-LSD (configs/common/dfine.py),
as configs/ablations/dn_detr_r50_fdr_golsd.py on the R50 base.
FDR alone: ``model.criterion.go_lsd=False``. DAB-DETR: ``model.decoder.denoising=null``."""
from ...common.dfine import use_fdr_golsd
from .dn_detr_r18 import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/toy/dn_detr_r18_fdr_golsd"
