"""RT-DETRv2-S (configs/rtdetrv2_r18.py) with D-FINE's Fine-grained Distribution Refinement: the box head
predicts edge distributions over 33 bins (with D-FINE's first-layer box and quality estimator), and the
criterion adds their FGL loss and GO-LSD (union-set matching, DDF distillation). Everything else is
RT-DETRv2's."""
from detectron2.config import LazyCall as L

from dfine.modeling.criterion import DistributionLoss

from ..rtdetrv2_r18 import dataloader, lr_multiplier, model, optimizer, train

model.decoder.box_head.reg_max = 32
model.criterion.terms.append(L(DistributionLoss)(temperature=5.0))
model.criterion.weight_dict.update(loss_fgl=0.15, loss_ddf=1.5)
model.criterion.update(losses=["vfl", "boxes", "local"], go_lsd=True)
train.output_dir = "./output/ablations/rtdetrv2_r18_fdr"
