"""D-FINE-S: HGNetv2-B0 with LAB, 132 epochs on COCO (official configs/dfine/dfine_hgnetv2_s_coco.yml).
README: 48.5 AP, 10M parameters, 25 GFLOPs."""
from dfine.data import generate_scales

from .dfine_hgnetv2_m import dataloader, lr_multiplier, model, optimizer, train

model.backbone.name = "B0"
model.encoder.update(in_channels=[256, 512, 1024], depth_mult=0.34, expansion=0.5)
model.decoder.num_layers = 3

dataloader.train.multi_scale = generate_scales(640, 20)
train.output_dir = "./output/dfine_hgnetv2_s"

for rule in optimizer.params.rules[:2]:
    rule["lr"] = 1e-4
