"""RT-DETRv2-X: PResNet-101vd, hidden 384 encoder, 72 epochs on COCO (official
configs/rtdetrv2/rtdetrv2_r101vd_6x_coco.yml). README: 54.3 AP, 76M parameters, 259 GFLOPs."""
from .common.data.coco import dataloader
from .common.models.rtdetrv2 import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

model.backbone.depth = 101
model.encoder.hidden_dim = 384
model.encoder.dim_feedforward = 2048
model.decoder.input_proj.in_channels = [384, 384, 384]

train.output_dir = "./output/rtdetrv2_r101"
train.epochs = 72
train.eval_epochs = 1
train.checkpoint_epochs = 1
dataloader.train.mapper.policy_epoch = 71
dataloader.train.multi_scale_stop_epoch = 71

optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1e-6},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
