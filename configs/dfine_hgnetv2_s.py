"""D-FINE-S: HGNetv2-B0 with LAB, 132 epochs on COCO (official configs/dfine/dfine_hgnetv2_s_coco.yml).
README: 48.5 AP, 10M parameters, 25 GFLOPs."""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.models.dfine import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

# The whole backbone trains, BatchNorm included.
model.backbone.update(name="B0", use_lab=True, freeze_at=-1, freeze_norm=False)
model.encoder.update(in_channels=[256, 512, 1024], depth_mult=0.34, expansion=0.5)
model.decoder.num_layers = 3

dataloader.train.mapper.policy_epoch = 120
dataloader.train.update(total_batch_size=32, multi_scale=generate_scales(640, 20), multi_scale_stop_epoch=120)

train.output_dir = "./output/dfine_hgnetv2_s"
train.epochs = 132
train.eval_epochs = 1
train.checkpoint_epochs = 1
train.ema.warmups = 1000
train.stage_switch = dict(epoch=120, ema_restart_decay=0.9999)

# The official patterns, verbatim (see configs/dfine_hgnetv2_m.py).
lr_multiplier.warmup_iters = 500
optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1e-4},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 1e-4, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
}
