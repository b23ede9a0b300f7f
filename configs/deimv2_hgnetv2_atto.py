"""DEIMv2-Atto (official configs/deimv2/deimv2_hgnetv2_atto_coco.yml): 500 epochs on COCO at 320.
README: 23.8 AP, 0.5M parameters, 0.8 GFLOPs.

The Femto model and recipe (configs/deimv2_hgnetv2_femto.py) with HGNetv2-Atto (a 256-channel last
stage with 3x3 kernels), a 64-channel encoder and decoder, 100 queries, Mosaic at 0.3, boxes thinner
than 12 px dropped, and LRs 2e-3 (backbone 1e-3).
"""
from detectron2.config import LazyCall as L

from dfine.modeling.encoder import LiteEncoder

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages, set_input_size
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="Atto", use_lab=True, return_idx=[2])
model.encoder = L(LiteEncoder)(in_channels=[256], feat_strides=[16], hidden_dim=64, expansion=0.34, depth_mult=0.5,
                               act="silu")
model.decoder.update(hidden_dim=64, num_levels=2, num_layers=3, num_queries=100)
model.decoder.input_proj.update(in_channels=[64, 64], in_strides=[16, 32])
model.decoder.layer.update(dim_feedforward=160, target_gate=False)
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
dataloader.train.mapper.update(mosaic_prob=0.3, min_box_size=12)
train.output_dir = "./output/deimv2_hgnetv2_atto"
optimizer.update(lr=2e-3, weight_decay=1e-4)
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1e-3},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 1e-3, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
set_input_size(model, dataloader, 320)
