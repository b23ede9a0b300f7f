"""RT-DETRv2-S: PResNet-18vd, 120 epochs on COCO, single-scale (official
configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml). README: 48.1 AP, 20M parameters, 60 GFLOPs."""
from .common.data.coco import dataloader
from .common.models.rtdetrv2 import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

model.backbone.depth = 18
model.backbone.freeze_at = -1
model.backbone.freeze_norm = False
model.encoder.in_channels = [128, 256, 512]
model.encoder.expansion = 0.5
model.decoder.num_layers = 3

train.output_dir = "./output/rtdetrv2_r18"
train.epochs = 120
train.eval_epochs = 1
train.checkpoint_epochs = 1
dataloader.train.mapper.policy_epoch = 117
dataloader.train.multi_scale = None  # the official R18 config sets `scales: ~`

# The whole backbone at the base LR; no weight decay on any norm.
optimizer.params.rules = {
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
