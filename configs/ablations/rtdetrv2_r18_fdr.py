"""RT-DETRv2-S (configs/rtdetrv2_r18.py) with D-FINE's Fine-grained Distribution Refinement: the box head
predicts edge distributions over 33 bins (with D-FINE's first-layer box and quality estimator), and the
criterion adds their FGL loss and GO-LSD (union-set matching, DDF distillation): configs/common/dfine.py.
Everything else is RT-DETRv2's."""
from ..common.dfine import use_fdr_golsd
from ..rtdetrv2_r18 import dataloader, lr_multiplier, model, optimizer, train

use_fdr_golsd(model)
train.output_dir = "./output/ablations/rtdetrv2_r18_fdr"
