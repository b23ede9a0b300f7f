"""DEIMv2-N with HGNetv2-B0 (official configs/deimv2/deimv2_hgnetv2_n_coco.yml): 160 epochs on COCO.
README: 43.0 AP, 3.6M parameters, 6.8 GFLOPs.

Two levels (strides 16 and 32), 128 channels, single-scale. Stages (epochs): [0, 4) none, [4, 78)
Dense O2O (Copy-Blend at 0.4, in the Mosaic epochs only), [78, 148) RT-DETR augmentations, [148,
160) none; matcher switch at 136. The LR stays flat after the warm-up (lr_gamma 1).
"""
from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="B0", use_lab=True, return_idx=[2, 3])
model.encoder.update(in_channels=[512, 1024], feat_strides=[16, 32], hidden_dim=128, use_encoder_idx=[1],
                     dim_feedforward=512, expansion=0.34, depth_mult=0.5, version="dfine")
model.decoder.update(hidden_dim=128, num_levels=2, num_layers=3)
model.decoder.input_proj.update(in_channels=[128, 128], in_strides=[16, 32])
model.decoder.layer.dim_feedforward = 512
model.decoder.layer.cross_attn.num_points = [6, 6]

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=160, policy=[4, 78, 148], flat_epochs=7800,
                  no_aug_epochs=12, matcher_change_epoch=136, copy_blend_epochs=[4, 78])
lr_multiplier.lr_gamma = 1.0
dataloader.train.update(multi_scale=None)
dataloader.train.copy_blend.prob = 0.4
train.output_dir = "./output/deimv2_hgnetv2_n"
optimizer.update(lr=8e-4, weight_decay=1e-4)
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 4e-4},
    "backbone_norm": {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 4e-4, "weight_decay": 0.0},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
}
