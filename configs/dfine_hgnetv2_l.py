"""D-FINE-L: HGNetv2-B4, 80 epochs on COCO (official configs/dfine/dfine_hgnetv2_l_coco.yml).
README: 54.0 AP, 31M parameters, 91 GFLOPs.

    python train_net.py --config-file configs/dfine_hgnetv2_l.py

RT-DETR augmentations until epoch 72, multi-scale until 72, where the best state of the first 72
epochs is reloaded (stage switch). Ablations: `model.decoder.box_head.reg_max=null` (box deltas
instead of distributions; the criterion's FGL and DDF then have nothing to supervise) and
`model.criterion.go_lsd=False` (own matches, no distillation).
"""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.models.dfine import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

dataloader.train.mapper.policy_epoch = 72
dataloader.train.update(total_batch_size=32, multi_scale=generate_scales(640, 4), multi_scale_stop_epoch=72)

train.output_dir = "./output/dfine_hgnetv2_l"
train.epochs = 80
train.eval_epochs = 1
train.checkpoint_epochs = 1
train.ema.warmups = 1000
train.stage_switch = dict(epoch=72, ema_restart_decay=0.9999)

# Official include/optimizer.yml: linear warm-up over 500 iterations, then constant.
lr_multiplier.warmup_iters = 500
optimizer.lr = 2.5e-4
optimizer.weight_decay = 1.25e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1.25e-5},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
