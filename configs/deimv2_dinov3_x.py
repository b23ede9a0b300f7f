"""DEIMv2-X: DINOv3 ViT-S+/16 (SwiGLU) with the Spatial Tuning Adapter (official
configs/deimv2/deimv2_dinov3_x_coco.yml), 58 epochs on COCO. README: 57.8 AP, 50.3M parameters,
151.6 GFLOPs.

Blocks 5, 8, 11 tapped; STA width 64; 256 channels; a wider encoder (expansion 1.25, depth 1.37)
and 6 decoder layers. The ViT trains at 1e-5. Stages (epochs): [0, 4) none, [4, 29) Dense O2O,
[29, 50) RT-DETR augmentations with Copy-Blend, [50, 58) none; matcher switch at 45.
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
    L(DINOv3STA)(name="dinov3_vits16plus", interaction_indexes=[5, 8, 11], conv_inplane=64, hidden_dim=256,
                 finetune=True),
    backbone_lr=1e-5, width=256)
model.encoder.update(dim_feedforward=1024, expansion=1.25, depth_mult=1.37)
model.decoder.num_layers = 6
model.decoder.layer.dim_feedforward = 2048

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=58, policy=[4, 29, 50], flat_epochs=29,
                  no_aug_epochs=8, matcher_change_epoch=45)
dataloader.train.multi_scale = generate_scales(640, 3)
train.output_dir = "./output/deimv2_dinov3_x"
