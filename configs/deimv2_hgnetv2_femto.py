"""DEIMv2-Femto (official configs/deimv2/deimv2_hgnetv2_femto_coco.yml): 500 epochs on COCO at 416.
README: 31.0 AP, 1.0M parameters, 1.7 GFLOPs.

The Pico model and recipe (configs/deimv2_hgnetv2_pico.py) with HGNetv2-Femto (one HG block in the
last stage), a 96-channel encoder and decoder, 150 queries, and boxes thinner than 10 px dropped.
"""
from detectron2.config import LazyCall as L

from dfine.modeling.encoder import LiteEncoder

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages, set_input_size
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="Femto", use_lab=True, return_idx=[2])
model.encoder = L(LiteEncoder)(in_channels=[512], feat_strides=[16], hidden_dim=96, expansion=0.34, depth_mult=0.5,
                               act="silu")
model.decoder.update(hidden_dim=96, num_levels=2, num_layers=3, num_queries=150)
model.decoder.input_proj.update(in_channels=[96, 96], in_strides=[16, 32])
model.decoder.layer.update(dim_feedforward=256, target_gate=False)
model.decoder.layer.cross_attn.num_points = [4, 2]
# One box head shared by every layer; MAL and box losses only (no FGL/DDF, no union set).
model.decoder.box_head.share = True
model.criterion.update(losses=["mal", "boxes"], go_lsd=False)

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=500, policy=[4, 250, 400], flat_epochs=250,
                  no_aug_epochs=32, matcher_change_epoch=450)
# Official stop_epoch 468 for the collate, 400 for the policy: the stage switch follows the collate.
dataloader.train.multi_scale_stop_epoch = 468
train.stage_switch.epoch = 468
lr_multiplier.warmup_iters = 4000
dataloader.train.update(total_batch_size=128, multi_scale=None, mixup_prob=0.0, mixup_epochs=[40000, 15000])
dataloader.train.copy_blend.update(prob=0.0, epochs=[40000, 15000])
dataloader.train.mapper.min_box_size = 10
train.output_dir = "./output/deimv2_hgnetv2_femto"
optimizer.update(lr=1.6e-3, weight_decay=1e-4)
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 8e-4},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 8e-4, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
}
set_input_size(model, dataloader, 416)
