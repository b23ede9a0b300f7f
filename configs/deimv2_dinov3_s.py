"""DEIMv2-S: DEIMv2's ViT-Tiny (192-d, 3 heads, distilled from DINOv3) with the Spatial Tuning
Adapter (official configs/deimv2/deimv2_dinov3_s_coco.yml), 132 epochs on COCO. README: 50.9 AP,
9.7M parameters, 25.6 GFLOPs.

Blocks 3, 7, 11 tapped; STA width 16; 192 channels; a lighter encoder (expansion 0.34, depth 0.67)
and 4 decoder layers. Stages (epochs): [0, 4) none, [4, 64) Dense O2O, [64, 120) RT-DETR
augmentations with Copy-Blend, [120, 132) none; matcher switch at 100. Start from
``vitt_distill.pt`` with ``tools/convert_official.py --backbone``.
"""
from detectron2.config import LazyCall as L

from dfine.data import generate_scales
from dfine.modeling.backbone import DINOv3STA

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages, use_dinov3_backbone
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
use_dinov3_backbone(
    model, optimizer,
    L(DINOv3STA)(name="vit_tiny", embed_dim=192, num_heads=3, interaction_indexes=[3, 7, 11]),
    backbone_lr=2.5e-5, width=192)
model.encoder.update(dim_feedforward=512, expansion=0.34, depth_mult=0.67)
model.decoder.num_layers = 4
model.decoder.layer.dim_feedforward = 512

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=132, policy=[4, 64, 120], flat_epochs=64,
                  no_aug_epochs=12, matcher_change_epoch=100)
dataloader.train.multi_scale = generate_scales(640, 20)
train.output_dir = "./output/deimv2_dinov3_s"
optimizer.weight_decay = 1e-4
