"""DEIMv2-M: DEIMv2's ViT-Tiny+ (256-d, 4 heads, distilled from DINOv3) with the Spatial Tuning
Adapter (official configs/deimv2/deimv2_dinov3_m_coco.yml), 102 epochs on COCO. README: 53.0 AP,
18.1M parameters, 52.2 GFLOPs.

Blocks 3, 7, 11 tapped; STA width 16; 256 channels; the ViT trains at 2.5e-5. Stages (epochs):
[0, 4) none, [4, 49) Dense O2O, [49, 90) RT-DETR augmentations with Copy-Blend, [90, 102) none;
matcher switch at 80. Start from ``vittplus_distill.pt`` with ``tools/convert_official.py --backbone``.
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
    L(DINOv3STA)(name="vit_tinyplus", embed_dim=256, num_heads=4, interaction_indexes=[3, 7, 11]),
    backbone_lr=2.5e-5, width=256)
model.encoder.update(dim_feedforward=512, expansion=0.67, depth_mult=1)
model.decoder.num_layers = 4
model.decoder.layer.dim_feedforward = 512

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=102, policy=[4, 49, 90], flat_epochs=49,
                  no_aug_epochs=12, matcher_change_epoch=80)
dataloader.train.multi_scale = generate_scales(640, 6)
train.output_dir = "./output/deimv2_dinov3_m"
optimizer.weight_decay = 1e-4
