"""The toy base configs/quickstart/dn_dab_deformable_detr_r18_toy.py with D-FINE's FDR + GO-LSD
(configs/common/dfine.py), as configs/ablations/*_fdr_golsd.py on the R50 bases. FDR alone:
``model.criterion.go_lsd=False``. DAB-Deformable-DETR: ``model.decoder.denoising=null``."""
from ...common.dfine import use_fdr_golsd
from ...quickstart.dn_dab_deformable_detr_r18_toy import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/toy/dn_dab_deformable_detr_r18_fdr_golsd"
