"""D-FINE-X: HGNetv2-B5, 384-channel encoder, 80 epochs on COCO (official
configs/dfine/dfine_hgnetv2_x_coco.yml). README: 55.8 AP, 62M parameters, 202 GFLOPs."""
from dfine.data import generate_scales

from .dfine_hgnetv2_l import dataloader, lr_multiplier, model, optimizer, train

model.backbone.name = "B5"
model.encoder.update(hidden_dim=384, dim_feedforward=2048)
model.decoder.update(feat_channels=[384, 384, 384], reg_scale=8.0)

dataloader.train.multi_scale = generate_scales(640, 3)
train.output_dir = "./output/dfine_hgnetv2_x"
train.stage_switch.ema_restart_decay = 0.9998

optimizer.params.rules[0]["lr"] = 2.5e-6
