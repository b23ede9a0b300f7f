"""DEIMv2-L: DINOv3 ViT-S/16 with the Spatial Tuning Adapter (official
configs/deimv2/deimv2_dinov3_l_coco.yml), 68 epochs on COCO. README: 56.0 AP, 32.2M parameters,
96.7 GFLOPs.

    python train_net.py --config-file configs/deimv2_dinov3_l.py --num-gpus 4

Blocks 5, 8 and 11 of the ViT are tapped and resized to strides 8, 16 and 32, fused with the STA's
detail CNN (width 32) into 224 channels. Inputs are ImageNet-normalised. The ViT trains at 1.25e-5.
Stages (epochs): [0, 4) none, [4, 34) Dense O2O, [34, 60) RT-DETR augmentations with Copy-Blend,
[60, 68) none; matcher switch at 50.

Start from the DINOv3 weights as the official code does:
``tools/convert_official.py --backbone --config-file configs/deimv2_dinov3_l.py
dinov3_vits16_pretrain_lvd1689m-08c60483.pth init.pth`` and ``train.init_checkpoint=init.pth``.
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
    L(DINOv3STA)(name="dinov3_vits16", interaction_indexes=[5, 8, 11], conv_inplane=32, hidden_dim=224, finetune=True),
    backbone_lr=1.25e-5, width=224)
model.encoder.update(dim_feedforward=896, expansion=1.0, depth_mult=1)
model.decoder.num_layers = 4
model.decoder.layer.dim_feedforward = 1792

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=68, policy=[4, 34, 60], flat_epochs=34,
                  no_aug_epochs=8, matcher_change_epoch=50)
dataloader.train.multi_scale = generate_scales(640, 3)
train.output_dir = "./output/deimv2_dinov3_l"
