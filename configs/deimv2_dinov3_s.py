"""DEIMv2-S: DEIMv2's ViT-Tiny (192-d, 3 heads, distilled from DINOv3) with the Spatial Tuning
Adapter (official configs/deimv2/deimv2_dinov3_s_coco.yml), 132 epochs on COCO. README: 50.9 AP,
9.7M parameters, 25.6 GFLOPs.

Blocks 3, 7, 11 tapped; STA width 16; 192 channels; a lighter encoder (expansion 0.34, depth 0.67)
and 4 decoder layers. Stages (epochs): [0, 4) none, [4, 64) Dense O2O, [64, 120) RT-DETR
augmentations with Copy-Blend, [120, 132) none; matcher switch at 100. Start from
``vitt_distill.pt`` with ``tools/convert_official.py --backbone``.
"""
from dfine.data import generate_scales

from .deimv2_dinov3_m import dataloader, lr_multiplier, model, optimizer, set_stages, train

model.backbone.update(name="vit_tiny", embed_dim=192, num_heads=3)
model.encoder.update(in_channels=[192] * 3, hidden_dim=192, expansion=0.34, depth_mult=0.67)
model.decoder.update(feat_channels=[192] * 3, hidden_dim=192)

set_stages(dataloader, train, lr_multiplier, model, epochs=132, policy=[4, 64, 120], flat_epochs=64, no_aug_epochs=12,
           matcher_change_epoch=100)
dataloader.train.multi_scale = generate_scales(640, 20)
train.output_dir = "./output/deimv2_dinov3_s"
