"""RT-DETRv2-M: PResNet-34vd, 120 epochs on COCO (official configs/rtdetrv2/rtdetrv2_r34vd_120e_coco.yml).
README: 49.9 AP, 31M parameters, 92 GFLOPs."""
from .common.data.coco import dataloader
from .common.models.rtdetrv2 import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

model.backbone.depth = 34
model.backbone.freeze_at = -1
model.backbone.freeze_norm = False
model.encoder.in_channels = [128, 256, 512]
model.encoder.expansion = 0.5
model.decoder.num_layers = 4

train.output_dir = "./output/rtdetrv2_r34"
train.epochs = 120
train.eval_epochs = 1
train.checkpoint_epochs = 1
dataloader.train.mapper.policy_epoch = 117
dataloader.train.multi_scale_stop_epoch = 117

# The official patterns, kept verbatim: `(?!.*norm|bn)` only excludes names containing "norm",
# and the second rule's `(?=.*norm|bn)` therefore catches the backbone norms.
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 5e-5},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 5e-5, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
}
