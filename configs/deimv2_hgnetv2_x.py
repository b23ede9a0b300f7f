"""DEIMv2-X with HGNetv2-B5 (official configs/deimv2/deimv2_hgnetv2_x_coco.yml): 58 epochs on COCO.

Stem frozen and every BatchNorm frozen; a 384-channel encoder feeding a 256-channel decoder (with
input projections), reg_scale 8. Schedule as configs/deimv2_hgnetv2_l.py, EMA restart decay 0.9998.
"""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="B5", freeze_at=0, freeze_norm=True)
model.encoder.update(hidden_dim=384, dim_feedforward=2048)
model.decoder.input_proj.in_channels = [384, 384, 384]
model.decoder.box_head.reg_scale = 8.0

set_deimv2_stages(
    dataloader,
    train,
    lr_multiplier,
    model,
    epochs=58,
    policy=[4, 29, 50],
    flat_epochs=29,
    no_aug_epochs=8,
    matcher_change_epoch=45,
)
dataloader.train.multi_scale = generate_scales(640, 3)
train.stage_switch.ema_restart_decay = 0.9998
train.output_dir = "./output/deimv2_hgnetv2_x"
optimizer.params.rules.backbone.lr = 5e-6
