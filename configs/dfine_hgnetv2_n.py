"""D-FINE-N: HGNetv2-B0 with LAB, two levels (strides 16 and 32) and a 128-channel encoder and
decoder, 160 epochs on COCO (official configs/dfine/dfine_hgnetv2_n_coco.yml). README: 42.8 AP,
4M parameters, 7 GFLOPs."""
from .common.data.coco import dataloader
from .common.models.dfine import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

# The whole backbone trains, BatchNorm included.
model.backbone.update(name="B0", use_lab=True, freeze_at=-1, freeze_norm=False, return_idx=[2, 3])
model.encoder.update(in_channels=[512, 1024], feat_strides=[16, 32], hidden_dim=128, use_encoder_idx=[1],
                     dim_feedforward=512, expansion=0.34, depth_mult=0.5)
model.decoder.update(hidden_dim=128, num_levels=2, num_layers=3)
model.decoder.input_proj.update(in_channels=[128, 128], in_strides=[16, 32])
model.decoder.layer.dim_feedforward = 512
model.decoder.layer.cross_attn.num_points = [6, 6]

dataloader.train.mapper.policy_epoch = 148
dataloader.train.update(total_batch_size=128, multi_scale=None, multi_scale_stop_epoch=148)

train.output_dir = "./output/dfine_hgnetv2_n"
train.epochs = 160
train.eval_epochs = 1
train.checkpoint_epochs = 1
train.ema.warmups = 1000
train.stage_switch = dict(epoch=148, ema_restart_decay=0.9999)

# The official patterns, verbatim (see configs/dfine_hgnetv2_m.py).
lr_multiplier.warmup_iters = 500
optimizer.lr = 8e-4
optimizer.weight_decay = 1e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 4e-4},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 4e-4, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
}
