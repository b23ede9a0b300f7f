"""The toy base configs/quickstart/dino_r18_toy.py with D-FINE's FDR + GO-LSD (configs/common/dfine.py),
as configs/ablations/dino_r50_fdr_golsd.py on the R50 base. FDR alone: ``model.criterion.go_lsd=False``."""
from ...common.dfine import use_fdr_golsd
from ...quickstart.dino_r18_toy import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/toy/dino_r18_fdr_golsd"
