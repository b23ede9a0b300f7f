"""D-FINE-X: HGNetv2-B5, 384-channel encoder, 80 epochs on COCO (official
configs/dfine/dfine_hgnetv2_x_coco.yml). README: 55.8 AP, 62M parameters, 202 GFLOPs.

The schedule of D-FINE-L (configs/dfine_hgnetv2_l.py) with an EMA restart decay of 0.9998.
"""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.models.dfine import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

model.backbone.name = "B5"
model.encoder.update(hidden_dim=384, dim_feedforward=2048)
model.decoder.input_proj.in_channels = [384, 384, 384]
model.decoder.box_head.reg_scale = 8.0

dataloader.train.mapper.policy_epoch = 72
dataloader.train.update(total_batch_size=32, multi_scale=generate_scales(640, 3), multi_scale_stop_epoch=72)

train.output_dir = "./output/dfine_hgnetv2_x"
train.epochs = 80
train.eval_epochs = 1
train.checkpoint_epochs = 1
train.ema.warmups = 1000
train.stage_switch = dict(epoch=72, ema_restart_decay=0.9998)

lr_multiplier.warmup_iters = 500
optimizer.lr = 2.5e-4
optimizer.weight_decay = 1.25e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 2.5e-6},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
