"""DEIMv2-S with HGNetv2-B0 (official configs/deimv2/deimv2_hgnetv2_s_coco.yml): 132 epochs on COCO.

D-FINE's GELAN block (with CSP2 layers) in the encoder; 3 decoder layers. Stages (epochs): [0, 4)
none, [4, 64) Dense O2O, [64, 120) RT-DETR augmentations with Copy-Blend, [120, 132) none; matcher
switch at 100.
"""
from dfine.data import generate_scales

from .deimv2_hgnetv2_m import dataloader, lr_multiplier, model, optimizer, set_stages, train

model.backbone.name = "B0"
model.encoder.update(in_channels=[256, 512, 1024], version="dfine", expansion=0.5, depth_mult=0.34)
model.decoder.num_layers = 3

set_stages(dataloader, train, lr_multiplier, model, epochs=132, policy=[4, 64, 120], flat_epochs=64, no_aug_epochs=12,
           matcher_change_epoch=100)
dataloader.train.multi_scale = generate_scales(640, 20)
train.output_dir = "./output/deimv2_hgnetv2_s"
optimizer.params.rules[0]["lr"] = 2e-4
