"""DEIMv2-Pico (official configs/deimv2/deimv2_hgnetv2_pico_coco.yml): 500 epochs on COCO at 640.
README: 38.5 AP, 1.5M parameters, 5.2 GFLOPs.

HGNetv2-Pico (B0 pruned to three stages, stride 16 out) and the LiteEncoder; a 3-layer decoder
without target gating and with one box head shared by all layers; MAL and box losses only (no
FGL/DDF, no union set). Batch 128, single-scale, no MixUp or Copy-Blend. Stages (epochs): [0, 4)
none, [4, 250) Mosaic at 0.5, [250, 400) RT-DETR augmentations, [400, 500) none; the stage switch
(and the end of multi-scale, which is off anyway) at 468 as officially, matcher switch at 450.

Start from the B0 ImageNet weights as the official code does:
``tools/convert_official.py --backbone --partial --config-file configs/deimv2_hgnetv2_pico.py
PPHGNetV2_B0_stage1.pth init.pth`` and ``train.init_checkpoint=init.pth``.
"""
from detectron2.config import LazyCall as L

from dfine.modeling.encoder import LiteEncoder

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages, set_input_size
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="Pico", use_lab=True, return_idx=[2])
model.encoder = L(LiteEncoder)(in_channels=[512], feat_strides=[16], hidden_dim=112, expansion=0.34, depth_mult=0.5,
                               act="silu")
model.decoder.update(hidden_dim=112, num_levels=2, num_layers=3, num_queries=200)
model.decoder.input_proj.update(in_channels=[112, 112], in_strides=[16, 32])
model.decoder.layer.update(dim_feedforward=320, target_gate=False)
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
dataloader.train.mapper.min_box_size = 8
train.output_dir = "./output/deimv2_hgnetv2_pico"
optimizer.update(lr=1.6e-3, weight_decay=1e-4)
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 8e-4},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 8e-4, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
}
set_input_size(model, dataloader, 640)
