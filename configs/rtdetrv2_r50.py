"""RT-DETRv2-L: PResNet-50vd, 72 epochs on COCO (official configs/rtdetrv2/rtdetrv2_r50vd_6x_coco.yml).

README: 53.4 AP, 42M parameters, 136 GFLOPs.
"""
from .common.data.coco import dataloader
from .common.models.rtdetrv2 import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

train.output_dir = "./output/rtdetrv2_r50"
train.epochs = 72
train.eval_epochs = 1
train.checkpoint_epochs = 1
train.ema.warmups = 2000
# Photometric distort, zoom-out and IoU crop stop at epoch 71, and so does multi-scale training.
dataloader.train.mapper.policy_epoch = 71
dataloader.train.multi_scale_stop_epoch = 71
dataloader.train.total_batch_size = 16

optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
